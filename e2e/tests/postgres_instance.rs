//! The instance manager (`bulwark instance`) against real PostgreSQL (Debian's), two instances
//! on loopback, run as the `postgres` user as in a pod: bootstrap (initdb, then pg_basebackup),
//! streaming replication, the mutual-TLS command API, promote into a new epoch, fencing that cuts
//! the old primary off at once, stale epochs refused with both named, the old primary rewound
//! (pg_rewind) to rejoin as a replica of the new one, the epoch and role surviving a restart of the manager (a
//! SIGKILLed one takes its postgres with it), and a switchover that loses no write.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bulwark_controllers::postgres::client::Endpoint;
use bulwark_controllers::postgres::probe::{Outcome, WriteProbe, sequences_found};
use bulwark_e2e::eventually;
use bulwark_e2e::operator::bulwark_binary;
use bulwark_e2e::pki::{ClientCert, Pki};
use bulwark_e2e::postgres::{POSTGRES_BIN, instance_status, postgres_user};
use bulwark_e2e::process::{free_port, spawn_bound};
use serde_json::{Value, json};

/// Files both instances share: the CA, each side's certificates, the replication password.
struct Secrets {
    ca: PathBuf,
    server: ClientCert,
    operator: reqwest::Identity,
    stranger: reqwest::Identity,
    password_file: PathBuf,
}

fn identity(cert: &ClientCert) -> reqwest::Identity {
    let mut pem = std::fs::read(&cert.cert).unwrap();
    pem.extend(std::fs::read(&cert.key).unwrap());
    reqwest::Identity::from_pem(&pem).unwrap()
}

fn secrets(dir: &Path) -> Secrets {
    let (pki, authority) = Pki::generate(&dir.join("pki")).unwrap();
    let server = authority.serving("instance", &["127.0.0.1"]).unwrap();
    let operator = identity(&authority.client("bulwark-operator", &[]).unwrap());
    // A certificate from another CA: must be turned away.
    let (_, other) = Pki::generate(&dir.join("other-pki")).unwrap();
    let stranger = identity(&other.client("bulwark-operator", &[]).unwrap());
    // The build lives under root's home, which postgres may not enter: run a copy.
    std::fs::copy(bulwark_binary().unwrap(), dir.join("bulwark")).unwrap();
    let password_file = dir.join("replication-password");
    std::fs::write(&password_file, "s3cret with spaces").unwrap();
    // The instances run as postgres: let them read what they need.
    for entry in walk(dir) {
        let mode = if entry.is_dir() || entry.ends_with("bulwark") {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    Secrets {
        ca: pki.ca_cert,
        server,
        operator,
        stranger,
        password_file,
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            all.extend(walk(&path));
        } else {
            all.push(path);
        }
    }
    all
}

struct Instance {
    name: String,
    volume: PathBuf,
    pg_port: u16,
    api: String,
    args: Vec<String>,
    child: Option<Child>,
}

impl Instance {
    fn start(dir: &Path, name: &str, secrets: &Secrets, replica_of: Option<u16>) -> Instance {
        let volume = dir.join(name);
        std::fs::create_dir_all(&volume).unwrap();
        let (uid, gid) = postgres_user();
        std::os::unix::fs::chown(&volume, Some(uid), Some(gid)).unwrap();
        let pg_port = free_port().unwrap();
        let api_port = free_port().unwrap();
        let mut args = vec![
            "instance".to_string(),
            format!("--volume={}", volume.display()),
            format!("--postgres-bin={POSTGRES_BIN}"),
            format!("--port={pg_port}"),
            format!("--api-addr=127.0.0.1:{api_port}"),
            format!(
                "--replication-password-file={}",
                secrets.password_file.display()
            ),
            format!("--tls-cert={}", secrets.server.cert.display()),
            format!("--tls-key={}", secrets.server.key.display()),
            format!("--client-ca={}", secrets.ca.display()),
        ];
        if let Some(port) = replica_of {
            args.push(format!("--bootstrap-replica-of=127.0.0.1:{port}"));
        }
        let mut instance = Instance {
            name: name.into(),
            volume,
            pg_port,
            api: format!("https://127.0.0.1:{api_port}"),
            args,
            child: None,
        };
        instance.run();
        instance
    }

    fn run(&mut self) {
        let (uid, gid) = postgres_user();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.volume.join("manager.log"))
            .unwrap();
        let mut command = Command::new(self.volume.parent().unwrap().join("bulwark"));
        command
            .args(&self.args)
            .env("POD_NAME", &self.name)
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(spawn_bound(command).unwrap());
    }

    /// SIGTERM and wait: the manager stops PostgreSQL (fast shutdown) before it exits.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        let manager = std::fs::read_to_string(self.volume.join("manager.log")).unwrap_or_default();
        let postgres =
            std::fs::read_to_string(self.volume.join("postgres.log")).unwrap_or_default();
        let tail = |text: &str| {
            text.lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "{} manager:\n{}\n{} postgres:\n{}",
            self.name,
            tail(&manager),
            self.name,
            tail(&postgres)
        )
    }

    /// How many lines of the manager's log mention `text`.
    fn log_mentions(&self, text: &str) -> usize {
        std::fs::read_to_string(self.volume.join("manager.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(text))
            .count()
    }

    /// The superuser over the instance's Unix socket.
    fn superuser(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.volume.join("run"))
            .port(self.pg_port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2));
        config
    }

    /// A SQL session as the superuser.
    async fn sql(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.superuser().connect(tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    async fn count(&self) -> Option<i64> {
        let client = self.sql().await.ok()?;
        client
            .query_one("SELECT count(*) FROM acknowledged", &[])
            .await
            .ok()
            .map(|row| row.get(0))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
    }
}

fn client(identity: Option<&reqwest::Identity>, ca: &Path) -> reqwest::Client {
    bulwark_controllers::runtime::ensure_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .timeout(Duration::from_secs(60));
    if let Some(identity) = identity {
        builder = builder.identity(identity.clone());
    }
    builder.build().unwrap()
}

async fn status(http: &reqwest::Client, instance: &Instance) -> Option<Value> {
    instance_status(http, &instance.api).await
}

async fn command(http: &reqwest::Client, instance: &Instance, body: Value) -> (u16, Value) {
    let response = http
        .post(format!("{}/commands", instance.api))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", instance.log()));
    let code = response.status().as_u16();
    (code, response.json().await.unwrap())
}

/// Has `instance` follow `primary` in `epoch` and waits until it streams from it.
async fn follow_until_streaming(
    http: &reqwest::Client,
    instance: &Instance,
    primary: &Instance,
    epoch: u64,
) {
    let target = format!("127.0.0.1:{}", primary.pg_port);
    let (code, state) = command(
        http,
        instance,
        json!({"command": "follow", "primary": target, "epoch": epoch}),
    )
    .await;
    assert_eq!(code, 200, "{state}\n{}", instance.log());
    wait_status(
        http,
        instance,
        &format!("streaming from {}", primary.name),
        |s| s["walReceiver"] == "streaming",
    )
    .await;
}

/// Waits until `instance`'s status satisfies `check`.
async fn wait_status(
    http: &reqwest::Client,
    instance: &Instance,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    eventually(
        Duration::from_secs(60),
        &format!("{}: {what}", instance.name),
        || async { status(http, instance).await.filter(|s| check(s)) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", instance.log()))
}

/// A primary `a` and a replica `b` cloned from it and streaming, with the operator's client.
struct Pair {
    a: Instance,
    b: Instance,
    operator: reqwest::Client,
    secrets: Secrets,
    _dir: tempfile::TempDir,
}

async fn primary_and_replica() -> Pair {
    let dir = tempfile::Builder::new()
        .prefix("bulwark-pg-")
        .tempdir()
        .unwrap();
    let secrets = secrets(dir.path());
    let operator = client(Some(&secrets.operator), &secrets.ca);
    let a = Instance::start(dir.path(), "a", &secrets, None);
    let a_status = wait_status(&operator, &a, "primary running", |s| {
        s["running"] == true && s["inRecovery"] == false
    })
    .await;
    println!("a: {a_status}");
    assert_eq!(
        (a_status["role"].as_str(), a_status["epoch"].as_u64()),
        (Some("primary"), Some(0))
    );
    let b = Instance::start(dir.path(), "b", &secrets, Some(a.pg_port));
    let b_status = wait_status(&operator, &b, "streaming from a", |s| {
        s["walReceiver"] == "streaming"
    })
    .await;
    println!("b: {b_status}");
    assert_eq!(b_status["role"], "replica");
    Pair {
        a,
        b,
        operator,
        secrets,
        _dir: dir,
    }
}

#[tokio::test]
async fn promote_fence_and_rejoin_under_epochs_on_real_postgresql() {
    // Bootstrap: a primary, then a replica cloned from it and streaming.
    let Pair {
        mut a,
        b,
        operator,
        secrets,
        _dir,
    } = primary_and_replica().await;

    // Writes on the primary reach the replica; the primary lists it as a standby.
    let writer = a.sql().await.unwrap();
    writer
        .batch_execute("CREATE TABLE acknowledged (n int PRIMARY KEY); INSERT INTO acknowledged SELECT generate_series(1, 100);")
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "b replays 100 rows", || async {
        (b.count().await? == 100).then_some(())
    })
    .await
    .unwrap();
    let a_status = wait_status(&operator, &a, "b listed as a standby", |s| {
        s["standbys"]
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p[0] == "b"))
    })
    .await;
    println!("a with its standby: {a_status}");

    // Only the operator's CA may command: no certificate, or one from another CA, is refused
    // at the handshake.
    for (who, http) in [
        ("no certificate", client(None, &secrets.ca)),
        (
            "another CA's certificate",
            client(Some(&secrets.stranger), &secrets.ca),
        ),
    ] {
        let refused = http
            .post(format!("{}/commands", a.api))
            .json(&json!({"command": "fence", "epoch": 9}))
            .send()
            .await;
        assert!(refused.is_err(), "{who}: {refused:?}");
    }
    assert_eq!(
        status(&operator, &a).await.unwrap()["epoch"],
        0,
        "nothing was fenced"
    );

    // Failover into epoch 1: promote b, fence a. Fencing cuts a's sessions at once.
    let (code, state) = command(&operator, &b, json!({"command": "promote", "epoch": 1})).await;
    assert_eq!((code, state), (200, json!({"epoch": 1, "role": "primary"})));
    let b_status = wait_status(&operator, &b, "promoted", |s| s["inRecovery"] == false).await;
    println!("b promoted: {b_status}");
    assert_eq!(b_status["timeline"], 2, "a promotion starts a new timeline");
    let (code, state) = command(&operator, &a, json!({"command": "fence", "epoch": 1})).await;
    assert_eq!((code, state), (200, json!({"epoch": 1, "role": "fenced"})));
    assert!(
        writer
            .execute("INSERT INTO acknowledged VALUES (101)", &[])
            .await
            .is_err(),
        "a fenced primary acknowledges nothing more"
    );
    assert!(
        a.sql().await.is_err(),
        "a fenced primary takes no new sessions"
    );
    let a_status = status(&operator, &a).await.unwrap();
    assert_eq!(
        (a_status["role"].as_str(), a_status["running"].as_bool()),
        (Some("fenced"), Some(false))
    );
    // The supervisor leaves a fenced instance stopped.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        a.sql().await.is_err(),
        "still fenced after the supervisor's rounds"
    );

    // A delayed command from an older epoch is refused, naming both epochs; so is a second
    // promotion into an epoch that already has its primary.
    let (code, refusal) = command(&operator, &a, json!({"command": "promote", "epoch": 0})).await;
    println!("stale command: {code} {refusal}");
    assert_eq!(code, 409);
    assert_eq!(
        refusal["error"],
        "epoch 0 is older than epoch 1, the highest this instance has accepted"
    );
    let (code, _) = command(&operator, &b, json!({"command": "promote", "epoch": 0})).await;
    assert_eq!(code, 409);

    // The new primary takes writes; the old one rejoins as its replica and catches up.
    b.sql()
        .await
        .unwrap()
        .batch_execute("INSERT INTO acknowledged SELECT generate_series(101, 110);")
        .await
        .unwrap();
    follow_until_streaming(&operator, &a, &b, 1).await;
    eventually(
        Duration::from_secs(30),
        "a replays all 110 rows",
        || async { (a.count().await? == 110).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    // Rewound to where the histories split, not copied anew.
    assert_eq!(
        (
            a.log_mentions("no rewind required"),
            a.log_mentions("pg_rewind failed"),
            a.log_mentions("pg_basebackup")
        ),
        (0, 0, 0),
        "{}",
        a.log()
    );
    assert!(a.log_mentions("pg_rewind: Done!") > 0, "{}", a.log());

    // The epoch and role are on the volume: a restarted manager keeps them.
    a.stop();
    a.run();
    let a_status = wait_status(&operator, &a, "back as a replica", |s| {
        s["walReceiver"] == "streaming"
    })
    .await;
    println!("a after a restart: {a_status}");
    assert_eq!(
        (a_status["role"].as_str(), a_status["epoch"].as_u64()),
        (Some("replica"), Some(1))
    );
    let (code, _) = command(&operator, &a, json!({"command": "fence", "epoch": 0})).await;
    assert_eq!(
        code, 409,
        "the persisted epoch still refuses older commands"
    );

    // A SIGKILLed manager takes its postgres with it (no stray postmaster holds the volume),
    // and the next one resumes where it was.
    let mut killed = a.child.take().unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    eventually(
        Duration::from_secs(10),
        "a's postgres gone with its manager",
        || async { a.sql().await.is_err().then_some(()) },
    )
    .await
    .unwrap();
    a.run();
    wait_status(&operator, &a, "streaming again at epoch 1", |s| {
        s["walReceiver"] == "streaming" && s["epoch"] == 1
    })
    .await;

    // Switchover back to a in epoch 2, losing nothing: b takes writes up to the moment it is
    // demoted (stopped cleanly), a replays up to b's final LSN, is promoted, and b follows it
    // as it is, without a new copy.
    b.sql()
        .await
        .unwrap()
        .batch_execute("INSERT INTO acknowledged SELECT generate_series(111, 160);")
        .await
        .unwrap();
    let clones_before = b.log_mentions("pg_basebackup");
    let (code, state) = command(&operator, &b, json!({"command": "demote", "epoch": 2})).await;
    assert_eq!((code, state), (200, json!({"epoch": 2, "role": "demoted"})));
    assert!(
        b.sql().await.is_err(),
        "a demoted primary takes no sessions"
    );
    let final_lsn = wait_status(&operator, &b, "stopped with a final LSN", |s| {
        s["running"] == false && s["finalLsn"].is_string()
    })
    .await["finalLsn"]
        .as_str()
        .map(lsn)
        .unwrap();
    let a_status = wait_status(&operator, &a, "replayed up to b's final LSN", |s| {
        s["replayedLsn"]
            .as_str()
            .is_some_and(|r| lsn(r) >= final_lsn)
    })
    .await;
    println!(
        "switchover: b stopped at {final_lsn:#x}; a replayed {}",
        a_status["replayedLsn"]
    );
    let (code, _) = command(&operator, &a, json!({"command": "promote", "epoch": 2})).await;
    assert_eq!(code, 200);
    assert_eq!(
        a.count().await,
        Some(160),
        "every write b acknowledged is on a"
    );
    follow_until_streaming(&operator, &b, &a, 2).await;
    assert_eq!(
        b.log_mentions("pg_basebackup"),
        clones_before,
        "b followed without a new copy"
    );
    a.sql()
        .await
        .unwrap()
        .batch_execute("INSERT INTO acknowledged VALUES (161);")
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "b replays a's new write",
        || async { (b.count().await? == 161).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.log()));
}

/// A drill's faults at the instance: a partition cuts established sessions (outside a pod there
/// is no NetworkPolicy to wait for) and a freeze stops PostgreSQL; both hold status and
/// commands, and both lift themselves at their deadline, so a drill whose operator died leaves
/// nothing in place for longer than it asked.
#[tokio::test]
async fn drill_faults_hold_the_api_and_lift_themselves_at_their_deadline() {
    let Pair {
        a,
        b,
        operator,
        _dir,
        ..
    } = primary_and_replica().await;
    let fault = |body: Value| {
        let (operator, url) = (&operator, format!("{}/faults", a.api));
        async move {
            let response = operator.post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let answers_status = || async {
        operator
            .get(format!("{}/status", a.api))
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .is_ok()
    };
    for (body, in_place) in [
        (json!({"fault": "partition", "seconds": 3}), "partitioned"),
        (json!({"fault": "freeze", "seconds": 3}), "frozen"),
    ] {
        let session = a.sql().await.unwrap();
        session.simple_query("SELECT 1").await.unwrap();
        let started = std::time::Instant::now();
        let faults = fault(body).await;
        assert_eq!(faults[in_place], true, "{faults}");
        assert!(
            !answers_status().await,
            "{in_place}: status must not answer"
        );
        if in_place == "partitioned" {
            // The session is cut, and b's replication with it; PostgreSQL itself runs on.
            eventually(Duration::from_secs(5), "the session cut", || async {
                session
                    .simple_query("SELECT 1")
                    .await
                    .is_err()
                    .then_some(())
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
            assert!(
                a.sql().await.is_ok(),
                "a new session is PostgreSQL's to take"
            );
        }
        eventually(Duration::from_secs(10), "the fault lifted", || async {
            answers_status().await.then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
        let lifted = started.elapsed();
        assert!(
            lifted >= Duration::from_secs(3),
            "{in_place} lifted early: {lifted:?}"
        );
        let faults = fault(json!({"fault": "heal"})).await;
        assert_eq!(faults, json!({"frozen": false, "partitioned": false}));
        println!("{in_place} for 3s: lifted itself after {lifted:?}");
    }
    wait_status(&operator, &b, "b streaming again", |s| {
        s["walReceiver"] == "streaming"
    })
    .await;
    assert_eq!(
        a.log_mentions("the partition reached its deadline"),
        1,
        "{}",
        a.log()
    );
    assert_eq!(
        a.log_mentions("the freeze reached its deadline"),
        1,
        "{}",
        a.log()
    );
}

/// An LSN (`X/Y`, hexadecimal halves) as a number.
fn lsn(text: &str) -> u64 {
    let (high, low) = text.split_once('/').unwrap();
    (u64::from_str_radix(high, 16).unwrap() << 32) | u64::from_str_radix(low, 16).unwrap()
}

/// Synchronous mode: with `ANY 1 (b)` on the primary a commit is acknowledged only once b has
/// it (with b down, a commit waits), so when the primary crashes mid-stream and b is promoted,
/// every acknowledged write is there.
#[tokio::test]
async fn synchronous_commits_wait_for_the_standby_and_survive_a_primary_crash() {
    let Pair {
        mut a,
        mut b,
        operator,
        _dir,
        ..
    } = primary_and_replica().await;
    a.sql()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE acknowledged (n bigint PRIMARY KEY)")
        .await
        .unwrap();
    let (code, state) = command(
        &operator,
        &a,
        json!({"command": "synchronous", "epoch": 0, "count": 1, "standbys": ["b"]}),
    )
    .await;
    assert_eq!(code, 200, "{state}");
    wait_status(&operator, &a, "b a quorum standby", |s| {
        s["standbys"] == json!([["b", "quorum"]])
    })
    .await;

    // b down: a commit is not acknowledged; b back: it is.
    b.stop();
    let waiting = a.sql().await.unwrap();
    let mut insert = tokio::spawn(async move {
        waiting
            .execute("INSERT INTO acknowledged VALUES (0)", &[])
            .await
            .map(drop)
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(3), &mut insert)
            .await
            .is_err(),
        "with its synchronous standby down, a commit must wait"
    );
    b.run();
    tokio::time::timeout(Duration::from_secs(60), insert)
        .await
        .expect("acknowledged once the standby is back")
        .unwrap()
        .unwrap();

    // Writes in a stream; the primary crashes (its manager SIGKILLed: postgres quits at once).
    let probe = WriteProbe::start(
        Endpoint::unix_socket(a.superuser()),
        Duration::from_millis(1),
        Duration::from_secs(2),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut crashed = a.child.take().unwrap();
    crashed.kill().unwrap();
    crashed.wait().unwrap();
    eventually(
        Duration::from_secs(10),
        "the probe to see the crash",
        || async {
            (probe.report().count(Outcome::Acknowledged) < probe.report().writes.len())
                .then_some(())
        },
    )
    .await
    .unwrap();
    let report = probe.stop().await;
    let (code, _) = command(&operator, &b, json!({"command": "promote", "epoch": 1})).await;
    assert_eq!(code, 200);
    let found = sequences_found(&b.sql().await.unwrap()).await.unwrap();
    let verification = report.verify(&found);
    println!(
        "synchronous failover: {} writes acknowledged before the crash, {} indeterminate ({} committed), {} rows on the promoted standby, {} acknowledged lost",
        report.count(Outcome::Acknowledged),
        report.count(Outcome::Indeterminate),
        verification.indeterminate_committed,
        found.len(),
        verification.lost.len()
    );
    assert!(
        report.count(Outcome::Acknowledged) > 10,
        "the stream must have been writing when the primary crashed"
    );
    assert_eq!(
        verification.lost,
        Vec::<i64>::new(),
        "acknowledged writes lost"
    );
    // The crashed primary's manager comes back and is told to follow a primary that is not
    // there: pg_rewind and the fallback copy both fail, and the command says so. The command is
    // kept, so corrected, it copies the real new primary.
    a.run();
    wait_status(&operator, &a, "a's manager answering", |s| s["epoch"] == 0).await;
    let nowhere = format!("127.0.0.1:{}", free_port().unwrap());
    let (code, state) = command(
        &operator,
        &a,
        json!({"command": "follow", "primary": nowhere, "epoch": 1}),
    )
    .await;
    println!("following a primary that is not there: {code} {state}");
    assert_eq!(code, 500);
    assert!(
        state["error"]
            .as_str()
            .unwrap()
            .starts_with("accepted but not carried out")
    );
    follow_until_streaming(&operator, &a, &b, 1).await;
}
