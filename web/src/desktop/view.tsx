// The desktop on the page: WebRTC first, noVNC when WebRTC fails (or when
// the user picks it); a toolbar with the path, fullscreen (with keyboard
// lock where the browser has it), the clipboard (the desktop's, shown and
// copied to the browser's where it allows; text sent to the desktop's) and
// a stats overlay; and, when the network drops, a visible countdown to a
// reconnect with a fresh ticket. Closing
// the view never ends the session: only "Stop desktop" does.

import { useEffect, useRef, useState } from "preact/hooks";
import { describe } from "../problem";
import type { DesktopConnection, DesktopPath, DesktopStats } from "./connection";
import { connectVnc } from "./vnc";
import { connectWebrtc } from "./webrtc";

type Choice = "auto" | DesktopPath;
const RECONNECT_SECONDS = [1, 2, 5, 10];

export function DesktopView({ sessionId }: { sessionId: string }) {
  const screen = useRef<HTMLDivElement>(null);
  const frame = useRef<HTMLDivElement>(null);
  const [choice, setChoice] = useState<Choice>("auto");
  const [connection, setConnection] = useState<DesktopConnection>();
  const [status, setStatus] = useState("Connecting to your desktop…");
  const [countdown, setCountdown] = useState<number>();
  /** Bumped to connect again. */
  const [attempt, setAttempt] = useState(0);
  /** Failed tries since the last connection: the backoff's step. */
  const failures = useRef(0);
  const [showStats, setShowStats] = useState(false);
  const [showClipboard, setShowClipboard] = useState(false);
  /** The clipboard text shown: the desktop's last, or what the user typed. */
  const [clipboard, setClipboard] = useState("");
  const [stats, setStats] = useState<DesktopStats>();

  useEffect(() => {
    let current: DesktopConnection | undefined;
    let cancelled = false;
    let timer: ReturnType<typeof setInterval> | undefined;

    const reconnectLater = (why: string) => {
      const wait = RECONNECT_SECONDS[Math.min(failures.current, RECONNECT_SECONDS.length - 1)];
      failures.current += 1;
      setStatus(why);
      setCountdown(wait);
      let left = wait;
      timer = setInterval(() => {
        left -= 1;
        setCountdown(left);
        if (left <= 0) {
          clearInterval(timer);
          setAttempt((a) => a + 1);
        }
      }, 1000);
    };

    // Each attempt draws into an element of its own, so that an attempt
    // that finishes after it was given up (the user switched paths) cannot
    // touch the view that replaced it.
    const hosts: HTMLElement[] = [];
    const open = async (path: DesktopPath) => {
      const host = document.createElement("div");
      host.className = "desktop-host";
      screen.current!.replaceChildren(host);
      hosts.push(host);
      const connect = path === "webrtc" ? connectWebrtc : connectVnc;
      return connect(host, sessionId, {
        onClosed: () => {
          if (cancelled) return;
          setConnection(undefined);
          reconnectLater("The connection to your desktop dropped. Your session keeps running.");
        },
        onClipboard: (text) => {
          setClipboard(text);
          // The browser's own clipboard too, where it lets a page write
          // (a secure context with the page focused); else the panel has it.
          navigator.clipboard?.writeText(text).catch(() => {});
        },
      });
    };

    (async () => {
      setCountdown(undefined);
      setStatus("Connecting to your desktop…");
      try {
        if (choice === "auto") {
          try {
            current = await open("webrtc");
          } catch (e) {
            if (cancelled) return;
            console.warn("WebRTC failed, falling back to noVNC:", e);
            setStatus("WebRTC could not connect; trying noVNC…");
            current = await open("vnc");
          }
        } else {
          current = await open(choice);
        }
        if (cancelled) {
          current.close();
          return;
        }
        setConnection(current);
        failures.current = 0;
        setStatus("");
        current.focus();
      } catch (e) {
        if (!cancelled) reconnectLater(`Could not reach your desktop: ${describe(e)}`);
      }
    })();

    return () => {
      cancelled = true;
      clearInterval(timer);
      current?.close();
      for (const host of hosts) host.remove();
      setConnection(undefined);
    };
  }, [sessionId, choice, attempt]);

  // Stats once a second while the overlay shows.
  useEffect(() => {
    if (!showStats || !connection) return;
    const timer = setInterval(() => connection.stats().then(setStats, () => {}), 1000);
    return () => clearInterval(timer);
  }, [showStats, connection]);

  const fullscreen = async () => {
    const el = frame.current!;
    if (document.fullscreenElement) {
      await document.exitFullscreen();
      return;
    }
    await el.requestFullscreen({ navigationUI: "hide" });
    // Keyboard lock keeps Escape, Alt+Tab and the like for the desktop
    // (Chromium, in fullscreen only); hold Escape to leave.
    const keyboard = (navigator as { keyboard?: { lock?: () => Promise<void> } }).keyboard;
    await keyboard?.lock?.().catch(() => {});
    connection?.lockPointer();
    connection?.focus();
  };

  return (
    <div class="desktop-frame" ref={frame}>
      <div class="desktop-toolbar" role="toolbar" aria-label="Desktop controls">
        <label>
          Connection
          <select value={choice} onChange={(e) => setChoice(e.currentTarget.value as Choice)}>
            <option value="auto">Automatic</option>
            <option value="webrtc">WebRTC</option>
            <option value="vnc">noVNC</option>
          </select>
        </label>
        {connection && (
          <span class="path" data-testid="desktop-path">
            {connection.path === "webrtc" ? "WebRTC" : "noVNC"}
          </span>
        )}
        <button onClick={fullscreen}>Fullscreen</button>
        <button aria-pressed={showClipboard} onClick={() => setShowClipboard(!showClipboard)}>
          Clipboard
        </button>
        <button aria-pressed={showStats} onClick={() => setShowStats(!showStats)}>
          Stats
        </button>
      </div>
      {showClipboard && (
        <div class="clipboard">
          <label>
            Desktop clipboard
            <textarea rows={3} value={clipboard} onInput={(e) => setClipboard(e.currentTarget.value)} />
          </label>
          <button disabled={!connection} onClick={() => connection?.sendClipboard(clipboard)}>
            Send to desktop
          </button>
        </div>
      )}
      <div class="desktop-screen" ref={screen} data-testid="desktop" />
      {(status || countdown !== undefined) && (
        <div class="desktop-status" role="status">
          {status}
          {countdown !== undefined && countdown > 0 && ` Reconnecting in ${countdown} s…`}
        </div>
      )}
      {showStats && stats && (
        <dl class="stats" aria-label="Connection statistics">
          {stats.width ? (
            <>
              <dt>Size</dt>
              <dd>
                {stats.width}×{stats.height}
              </dd>
            </>
          ) : null}
          {stats.fps !== undefined && (
            <>
              <dt>fps</dt>
              <dd>{stats.fps}</dd>
            </>
          )}
          {stats.kbps !== undefined && (
            <>
              <dt>Bitrate</dt>
              <dd>{stats.kbps} kbit/s</dd>
            </>
          )}
          {stats.rttMs !== undefined && (
            <>
              <dt>RTT</dt>
              <dd>{stats.rttMs} ms</dd>
            </>
          )}
          {stats.lossPercent !== undefined && (
            <>
              <dt>Loss</dt>
              <dd>{stats.lossPercent} %</dd>
            </>
          )}
        </dl>
      )}
    </div>
  );
}
