//! The gate's own page end to end, as a browser user meets it: Debian's
//! headless Chromium, in a network namespace of its own, opens the page the
//! gate serves at `/` and goes through it only — connects an EIP-6963 wallet
//! (the test's, backed by anvil's dev account #0), signs in, deposits on
//! anvil, waits for the credit, starts `small`, sees the real desktop image
//! over WebRTC (with Chromium's default mDNS-hidden host candidates) and then
//! over noVNC, sees the desktop take the size of its view, points, clicks
//! and types into it (xev on the desktop's display logs what arrives),
//! passes the clipboard both ways (the desktop's X clipboard read and set
//! with xclip), and stops it. The driver is
//! `tests/browser/web_client.js`; its screenshots land in
//! `target/web-client-shots/`.
//!
//! The browser reaches the gate at the host end of the namespace's veth pair
//! (the gate's public URL), through a TCP forwarder to the gate's loopback
//! listener; its WebRTC media reach the gate's UDP sockets on the same
//! address. Needs root, iproute2 and `make services`.

mod support;

use std::time::Duration;

use support::browser::{PageDriver, PageStage};
use support::desktop::{on_display, paint_checkerboard, wait_for_pointer};
use support::docker_cli;

/// [`on_display`] off the async runtime's threads.
async fn on_display_async(session: &str, args: &[&str]) -> String {
    let session = session.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        on_display(&session, &args)
    })
    .await
    .unwrap()
}

/// The session containers running now.
fn session_containers() -> Vec<String> {
    docker_cli(&[
        "ps",
        "--filter",
        "name=deskgate-session-",
        "--format",
        "{{.Names}}",
    ])
    .lines()
    .filter_map(|name| name.strip_prefix("deskgate-session-"))
    .map(str::to_string)
    .collect()
}

/// Waits for a session container that is not `seen` and paints the
/// checkerboard on its display; returns the session id.
async fn paint_new_session(seen: &[String]) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(session) = session_containers().into_iter().find(|s| !seen.contains(s)) {
            let id = session.clone();
            tokio::task::spawn_blocking(move || paint_checkerboard(&id))
                .await
                .unwrap();
            return session;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no session container within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_goes_from_wallet_to_desktop_through_the_page_only() {
    let page = PageStage::start("web_client", &[]).await;
    let mut driver = PageDriver::spawn("web_client.js", &page, &[]);

    let mut seen: Vec<String> = Vec::new();
    let mut painter = None;
    let mut resized = Vec::new();
    let mut clipboards = Vec::new();
    let mut typed = 0;
    let outcome: Result<(), String> = async {
        while let Some((name, event, line)) = driver.next().await? {
            match name.as_str() {
                "page" => {
                    if event["status"] != 200 {
                        return Err(format!("GET / answered {}", event["status"]));
                    }
                    let csp = event["csp"].as_str().unwrap_or_default();
                    if !csp.contains("frame-ancestors 'none'") || csp.contains("unsafe-inline") {
                        return Err(format!("the page's CSP is not strict: {csp}"));
                    }
                }
                "started" => {
                    let seen_now = seen.clone();
                    painter = Some(tokio::spawn(
                        async move { paint_new_session(&seen_now).await },
                    ));
                }
                "pointer" => {
                    let session = painter.take().expect("a started session").await.unwrap();
                    let x = event["x"].as_u64().unwrap() as u32;
                    let y = event["y"].as_u64().unwrap() as u32;
                    wait_for_pointer(&session, x, y, Duration::from_secs(20), &line).await;
                    // The X screen is the size the page shows, which is the
                    // view's: the page asked the desktop for it
                    // (SetDesktopSize, through the gate on either path).
                    let geometry =
                        on_display_async(&session, &["xdotool", "getdisplaygeometry"]).await;
                    let shown = format!("{} {}", event["size"][0], event["size"][1]);
                    if geometry.trim() != shown {
                        return Err(format!(
                            "the X screen is {geometry}, the page shows {shown}"
                        ));
                    }
                    if event["size"] != event["view"] {
                        return Err(format!("the desktop did not take the view's size: {line}"));
                    }
                    resized.push(shown);
                    // xev logs what reaches the X server from here on.
                    on_display_async(
                        &session,
                        &[
                            "sh",
                            "-c",
                            "xev -root -event keyboard -event button > /tmp/xev.log 2>&1 &",
                        ],
                    )
                    .await;
                    seen.push(session);
                    driver.reply("the pointer is there").await;
                }
                "typed" => {
                    let session = seen.last().cloned().expect("a session");
                    let wanted: Vec<String> = event["keysyms"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|k| format!("(keysym {},", k.as_str().unwrap()))
                        .collect();
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
                    loop {
                        let log = on_display_async(&session, &["cat", "/tmp/xev.log"]).await;
                        let pressed: Vec<&str> = log
                            .split("\n\n")
                            .filter(|e| e.contains("KeyPress event"))
                            .collect();
                        let all_keys = wanted
                            .iter()
                            .all(|k| pressed.iter().any(|e| e.contains(k.as_str())));
                        if log.contains("ButtonPress event") && all_keys {
                            break;
                        }
                        if tokio::time::Instant::now() > deadline {
                            return Err(format!(
                                "the desktop did not see the click and {wanted:?}:\n{log}"
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    typed += 1;
                    driver.reply("the desktop saw it").await;
                }
                "clipboard-open" => {
                    let session = seen.last().cloned().expect("a session");
                    let text = event["expect"].as_str().unwrap().to_string();
                    // xclip forks and keeps the selection until replaced.
                    on_display_async(
                        &session,
                        &[
                            "sh",
                            "-c",
                            "printf '%s' \"$1\" | xclip -selection clipboard",
                            "sh",
                            &text,
                        ],
                    )
                    .await;
                    driver.reply("on the desktop's clipboard").await;
                }
                "clipboard-sent" => {
                    let session = seen.last().cloned().expect("a session");
                    let want = event["text"].as_str().unwrap();
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
                    loop {
                        let got =
                            on_display_async(&session, &["xclip", "-o", "-selection", "clipboard"])
                                .await;
                        if got == want {
                            break;
                        }
                        if tokio::time::Instant::now() > deadline {
                            return Err(format!(
                                "the desktop's clipboard holds {got:?}, not {want:?}"
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    clipboards.push(want.to_string());
                    driver.reply("on the desktop").await;
                }
                "window-resized" => {
                    let session = seen.last().cloned().expect("a session");
                    let want = format!("{} {}", event["size"][0], event["size"][1]);
                    let geometry =
                        on_display_async(&session, &["xdotool", "getdisplaygeometry"]).await;
                    if geometry.trim() != want {
                        return Err(format!("after the window shrank the X screen is {geometry}, the page shows {want}"));
                    }
                    resized.push(want);
                    driver.reply("followed").await;
                }
                _ => {}
            }
        }
        Ok(())
    }
    .await;

    driver
        .finish(
            outcome,
            &page,
            &[
                "signed-in",
                "credited",
                "desktop",
                "pattern",
                "pointer",
                "ended",
            ],
        )
        .await;
    assert_eq!(seen.len(), 2, "one desktop over WebRTC, one over noVNC");
    eprintln!("desktop sizes seen (each path: the view, then a smaller window): {resized:?}");
    assert_eq!(resized.len(), 4, "two sizes on each path: {resized:?}");
    assert_eq!(
        clipboards.len(),
        2,
        "the clipboard went both ways on both paths"
    );
    assert_eq!(
        typed, 2,
        "the desktop saw the click and the keys on both paths"
    );
    page.stage.finish().await;
}
