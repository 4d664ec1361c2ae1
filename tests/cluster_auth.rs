//! Cluster mode against a NATS that wants credentials: user and password, token, TLS
//! with a private CA and client certificates, credentials files (user JWT and nkey
//! seed) of an operator-mode NATS; several server URLs; secrets kept out of the logs;
//! clear start errors for bad files.
//!
//! Needs `nats-server` (see `cluster.rs`).

#[path = "cluster_support.rs"]
#[allow(dead_code, reason = "shared with cluster.rs")]
mod cluster_support;
#[path = "ops_support.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use cluster_support::{Nats, operator};
use rollcall_client::Client;
use rollcall_tests::{Launch, Server, Started, eventually};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn secret_file(dir: &Path) -> String {
    let path = dir.join("cluster-secret");
    std::fs::write(&path, "a cluster secret shared by every node of this test").unwrap();
    path.display().to_string()
}

/// Starts node `id` with `args` (besides its id and the cluster secret).
fn launch(id: u16, secret: &str, args: &[&str]) -> Started {
    let mut launch = Launch::default()
        .arg("--log")
        .arg("info")
        .arg("--node-id")
        .arg(id.to_string())
        .arg("--cluster-secret-file")
        .arg(secret);
    for arg in args {
        launch = launch.arg(*arg);
    }
    launch.try_start(WAIT)
}

fn ready(started: Started) -> Server {
    match started {
        Started::Ready(server, _) => server,
        Started::Exited(exited) => panic!("the node exited: {}", exited.stderr),
    }
}

async fn connected(server: &Server) -> bool {
    eventually(WAIT, || {
        server
            .http("GET", "/healthz", None)
            .1
            .contains("\"cluster\":\"connected\"")
    })
    .await
}

/// An entry heartbeated on `from` shows on `to`.
async fn entry_crosses(from: &Server, to: &Server, room: &str) {
    let writer = Client::connect(&from.ws_url()).await.unwrap();
    let id = writer.client_id().unwrap();
    writer
        .presence(room)
        .heartbeat_acked(json!({"x": 1}), Duration::from_secs(60))
        .await
        .unwrap();
    let reader = Client::connect(&to.ws_url()).await.unwrap();
    reader
        .presence(room)
        .wait_until(WAIT, |e| e.contains_key(&id))
        .await
        .expect("the entry crosses nodes");
}

fn assert_not_logged(server: &Server, secret: &str) {
    let logged = server.stderr_so_far();
    assert!(!logged.is_empty(), "the node logs");
    assert!(!logged.contains(secret), "a secret was logged:\n{logged}");
}

#[tokio::test]
async fn user_and_password_in_the_url_or_flags_with_several_servers() {
    let Some(nats) = Nats::start_with(&["--user", "ruser", "--pass", "S3cretPW"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let dead = support::free_port();
    // Several servers, one of them down; the credentials in the URL.
    let servers = format!(
        "nats://127.0.0.1:{dead},nats://ruser:S3cretPW@127.0.0.1:{}",
        nats.port
    );
    let one = ready(launch(1, &secret, &["--nats", &servers]));
    let two = ready(launch(
        2,
        &secret,
        &[
            "--nats",
            &nats.url(),
            "--nats-user",
            "ruser",
            "--nats-password",
            "S3cretPW",
        ],
    ));
    for node in [&one, &two] {
        assert!(connected(node).await, "{}", node.stderr_so_far());
    }
    entry_crosses(&one, &two, "auth:user").await;
    // A wrong password: the node serves alone, says why, and shows no password.
    let wrong = format!("nats://ruser:Wr0ngPW@127.0.0.1:{}", nats.port);
    let three = ready(launch(3, &secret, &["--nats", &wrong]));
    assert!(
        eventually(WAIT, || three
            .stderr_so_far()
            .contains("authorization violation"))
        .await,
        "{}",
        three.stderr_so_far()
    );
    assert!(
        three
            .http("GET", "/healthz", None)
            .1
            .contains("\"cluster\":\"disconnected\"")
    );
    for node in [&one, &two] {
        assert_not_logged(node, "S3cretPW");
    }
    assert_not_logged(&three, "Wr0ngPW");
}

#[tokio::test]
async fn a_token_in_the_url_or_a_flag() {
    let Some(nats) = Nats::start_with(&["--auth", "T0kenXYZ42"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let url = format!("nats://T0kenXYZ42@127.0.0.1:{}", nats.port);
    let one = ready(launch(1, &secret, &["--nats", &url]));
    let two = ready(launch(
        2,
        &secret,
        &["--nats", &nats.url(), "--nats-token", "T0kenXYZ42"],
    ));
    for node in [&one, &two] {
        assert!(connected(node).await, "{}", node.stderr_so_far());
    }
    entry_crosses(&two, &one, "auth:token").await;
    for node in [&one, &two] {
        assert_not_logged(node, "T0kenXYZ42");
    }
}

#[tokio::test]
async fn tls_with_a_private_ca_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = support::TestPki::new();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let server_dir = dir.path().join("server");
    let client_dir = dir.path().join("client");
    std::fs::create_dir_all(&server_dir).unwrap();
    std::fs::create_dir_all(&client_dir).unwrap();
    let (server_cert, server_key) = pki.leaf().write(&server_dir);
    let (client_cert, client_key) = pki.leaf().write(&client_dir);
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 5\n}}\n",
            server_cert.display(),
            server_key.display(),
            ca.display()
        ),
    )
    .unwrap();
    let Some(nats) = Nats::start_with(&["-c", &config.display().to_string()]) else {
        return;
    };
    let secret = secret_file(dir.path());
    let tls = [
        "--nats-tls-ca".to_owned(),
        ca.display().to_string(),
        "--nats-tls-cert".to_owned(),
        client_cert.display().to_string(),
        "--nats-tls-key".to_owned(),
        client_key.display().to_string(),
    ];
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    // tls:// and nats:// with the TLS flags both use TLS.
    let url_one = format!("tls://127.0.0.1:{}", nats.port);
    let url_two = format!("nats://localhost:{}", nats.port);
    let one = ready(launch(
        1,
        &secret,
        &[&["--nats", &url_one][..], &tls].concat(),
    ));
    let two = ready(launch(
        2,
        &secret,
        &[&["--nats", &url_two][..], &tls].concat(),
    ));
    for node in [&one, &two] {
        assert!(connected(node).await, "{}", node.stderr_so_far());
    }
    entry_crosses(&one, &two, "auth:tls").await;
    // Without a client certificate, nats-server refuses the node.
    let three = ready(launch(
        3,
        &secret,
        &[
            "--nats",
            &url_one,
            "--nats-tls-ca",
            &ca.display().to_string(),
        ],
    ));
    assert!(
        eventually(WAIT, || three
            .stderr_so_far()
            .contains("cannot reach or log in to NATS"))
        .await,
        "{}",
        three.stderr_so_far()
    );
    assert!(
        !three
            .http("GET", "/healthz", None)
            .1
            .contains("\"cluster\":\"connected\"")
    );
}

#[tokio::test]
async fn creds_files_of_an_operator_mode_nats() {
    let dir = tempfile::tempdir().unwrap();
    let operator = operator::Operator::new();
    let config = dir.path().join("nats.conf");
    std::fs::write(&config, operator.server_config()).unwrap();
    let Some(nats) = Nats::start_with(&["-c", &config.display().to_string()]) else {
        return;
    };
    let secret = secret_file(dir.path());
    let creds_one = operator.app.user_creds(dir.path(), "node-one");
    let creds_two = operator.app.user_creds(dir.path(), "node-two");
    let seed_of = |creds: &Path| {
        let text = std::fs::read_to_string(creds).unwrap();
        text.lines()
            .find(|line| line.starts_with("SU"))
            .expect("a user seed in the file")
            .to_owned()
    };
    let one = ready(launch(
        1,
        &secret,
        &[
            "--nats",
            &nats.url(),
            "--nats-creds",
            &creds_one.display().to_string(),
        ],
    ));
    let two = ready(launch(
        2,
        &secret,
        &[
            "--nats",
            &nats.url(),
            "--nats-creds",
            &creds_two.display().to_string(),
        ],
    ));
    for node in [&one, &two] {
        assert!(connected(node).await, "{}", node.stderr_so_far());
        assert!(
            node.stderr_so_far().contains("credentials file"),
            "{}",
            node.stderr_so_far()
        );
    }
    entry_crosses(&one, &two, "auth:creds").await;
    entry_crosses(&two, &one, "auth:creds-back").await;
    assert_not_logged(&one, &seed_of(&creds_one));
    assert_not_logged(&two, &seed_of(&creds_two));
    // Refused: a user signed by an account key the operator never signed, and a
    // trusted user's JWT with another key's seed (it cannot sign the server's nonce).
    let rogue = nkeys::KeyPair::new_account();
    let untrusted = operator::user_creds(&rogue, dir.path(), "untrusted");
    let stolen = dir.path().join("stolen.creds");
    let other_seed = nkeys::KeyPair::new_user().seed().unwrap();
    std::fs::write(
        &stolen,
        std::fs::read_to_string(&creds_one)
            .unwrap()
            .replace(&seed_of(&creds_one), &other_seed),
    )
    .unwrap();
    for (id, creds) in [(3, &untrusted), (4, &stolen)] {
        let refused = ready(launch(
            id,
            &secret,
            &[
                "--nats",
                &nats.url(),
                "--nats-creds",
                &creds.display().to_string(),
            ],
        ));
        assert!(
            eventually(WAIT, || {
                let logged = refused.stderr_so_far();
                logged.contains("cannot reach or log in to NATS")
                    && logged.contains("authorization violation")
            })
            .await,
            "{}",
            refused.stderr_so_far()
        );
        assert!(
            refused
                .http("GET", "/healthz", None)
                .1
                .contains("\"cluster\":\"disconnected\""),
            "{}",
            refused.stderr_so_far()
        );
        assert_not_logged(&refused, &seed_of(creds));
    }
}

#[tokio::test]
async fn bad_cluster_settings_fail_the_start_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let junk = dir.path().join("junk.creds");
    std::fs::write(&junk, "not a credentials file\n").unwrap();
    let junk = junk.display().to_string();
    let missing = dir.path().join("missing.pem").display().to_string();
    let nats = "nats://127.0.0.1:4222";
    for (args, expected) in [
        (
            vec!["--nats", nats, "--nats-creds", &missing],
            "--nats-creds",
        ),
        (vec!["--nats", nats, "--nats-creds", &junk], "--nats-creds"),
        (
            vec!["--nats", nats, "--nats-tls-ca", &missing],
            "--nats-tls-ca",
        ),
        (
            vec!["--nats", "nats://u:Pw1@h:1,nats://u:Pw2@h:2"],
            "different credentials",
        ),
        (
            vec!["--nats", "nats://u:Pw1@h:1", "--nats-creds", &junk],
            "--nats-creds cannot be combined",
        ),
        (vec!["--nats", "http://h:1"], "nats:// or tls://"),
    ] {
        match launch(1, &secret, &args) {
            Started::Exited(exited) => {
                assert!(!exited.status.success());
                assert!(
                    exited.stderr.contains(expected),
                    "{args:?}: {}",
                    exited.stderr
                );
                assert!(!exited.stderr.contains("Pw1"), "{}", exited.stderr);
            }
            Started::Ready(..) => panic!("{args:?} started"),
        }
    }
    // No cluster secret at all: refused.
    let Started::Exited(exited) = Launch::default()
        .arg("--nats")
        .arg(nats)
        .arg("--node-id")
        .arg("1")
        .try_start(WAIT)
    else {
        panic!("a cluster node without a secret started");
    };
    assert!(
        exited.stderr.contains("--cluster-secret-file"),
        "{}",
        exited.stderr
    );
}
