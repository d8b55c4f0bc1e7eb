//! Unit tests of the Docker backend that need no engine (the client
//! reaches nothing): settings, labels, the container a spec becomes.

use super::*;

fn make_launcher(settings: LauncherSettings) -> DockerLauncher {
    let docker = Docker::connect_with_http("http://127.0.0.1:1", 1, bollard::API_DEFAULT_VERSION)
        .expect("client");
    DockerLauncher::new(docker, settings).expect("valid settings")
}

#[test]
fn root_and_reserved_names_and_bad_digests_are_refused() {
    for user in ["0", "0:0", "root", "", "root:root"] {
        let mut s = LauncherSettings::new("img");
        s.user = user.into();
        assert!(s.validate().is_err(), "{user:?} accepted");
    }
    let mut s = LauncherSettings::new("img");
    s.extra_env = vec![("DESKGATE_VNC_PASSWORD".into(), "x".into())];
    assert!(s.validate().is_err());
    s.extra_env = vec![("A=B".into(), "x".into())];
    assert!(s.validate().is_err());
    let mut s = LauncherSettings::new("img");
    s.image_digest = Some("sha256:abc".into());
    assert!(s.validate().is_err());
    s.image_digest = Some(format!("sha256:{}", "a".repeat(64)));
    assert!(s.validate().is_ok());
    assert_eq!(s.image_ref(), format!("img@sha256:{}", "a".repeat(64)));
}

#[test]
fn a_host_scope_filters_on_the_host_label_too() {
    assert_eq!(
        scoped_filter(LABEL_SESSION, None),
        vec![LABEL_SESSION.to_string()]
    );
    assert_eq!(
        scoped_filter(LABEL_SESSION, Some(3)),
        vec![LABEL_SESSION.to_string(), "deskgate.host=3".to_string()]
    );
    let labels = HashMap::from([(LABEL_HOST.to_string(), "7".to_string())]);
    assert_eq!(labelled_host(Some(&labels)), Some(7));
    assert_eq!(labelled_host(None), None);
    assert_eq!(host_of(Some(&HashMap::new())), 0);
}

#[tokio::test]
async fn a_scoped_launcher_refuses_launches_for_another_host() {
    let mut settings = LauncherSettings::new("img");
    settings.host = Some(1);
    // Refused before Docker is asked (this client reaches no daemon).
    let err = make_launcher(settings)
        .launch(&LaunchSpec {
            session: SessionId::new(),
            host: 0,
            gpu_indices: vec![0],
        })
        .await
        .expect_err("host 0 refused by host 1");
    assert!(
        err.0.contains("host 1") && err.0.contains("host 0"),
        "{err}"
    );
}

#[tokio::test]
async fn config_is_hardened_and_gpus_are_conditional() {
    let mut settings = LauncherSettings::new("img");
    settings.gpu_runtime = false;
    settings.extra_env = vec![("LANG".into(), "C.UTF-8".into())];
    settings.host_name = Some("node-7x2k".into());
    let launcher = make_launcher(settings);
    let spec = LaunchSpec {
        session: SessionId::new(),
        host: 2,
        gpu_indices: vec![1, 3],
    };
    let secret = random_secret();
    assert_eq!(secret.expose().len(), 64);
    let config = launcher.container_config(&spec, &secret);
    let host = config.host_config.clone().unwrap();
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(host.device_requests, None);
    assert_eq!(host.network_mode, Some(network_name(spec.session)));
    let labels = config.labels.clone().unwrap();
    assert_eq!(labels[LABEL_GPUS], "1,3");
    assert_eq!(labels[LABEL_HOST], "2");
    assert_eq!(labels[LABEL_HOST_NAME], "node-7x2k");
    let env = config.env.clone().unwrap();
    assert_eq!(env.len(), 4, "{}", env.len());
    assert!(env.contains(&"DESKGATE_GPUS=1,3".to_string()));
    assert!(env.contains(&"LANG=C.UTF-8".to_string()));

    let mut settings = LauncherSettings::new("img");
    settings.gpu_runtime = true;
    let config = make_launcher(settings).container_config(&spec, &secret);
    let requests = config.host_config.unwrap().device_requests.unwrap();
    assert_eq!(requests[0].device_ids, Some(vec!["1".into(), "3".into()]));
    assert_eq!(requests[0].driver.as_deref(), Some("nvidia"));
    let capabilities = requests[0].capabilities.clone().unwrap();
    assert_eq!(capabilities.len(), 1, "one AND-list of capabilities");
    for needed in ["gpu", "graphics", "display", "video", "utility"] {
        assert!(
            capabilities[0].iter().any(|c| c == needed),
            "{needed} missing"
        );
    }
}
