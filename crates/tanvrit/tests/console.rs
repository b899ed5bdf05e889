//! The web console at `/ui` in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`) against `tanvrit dev` processes: sign-in and its error in words,
//! a job submitted from the CLI appearing and succeeding without a reload, its live log,
//! cancelling a running job from its page, credits and keys, a user key seeing only its
//! business, the topology page showing a new leader after the leader of a 3-replica
//! cluster is killed, and a phone-sized screen signed in by keyboard.
//!
//! Screenshots of each page go to `target/console-screenshots/`, or to `docs/console/`
//! with `TANVRIT_UPDATE_SCREENSHOTS=1` (the checked-in ones the README shows).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tanvrit_api::{JobSpec, JobSubmitRequest, KeyCreateRequest, Scope};
use tanvrit_testkit::browser::{Browser, Locator};
use tanvrit_testkit::process::{ProcessCluster, ServerProcess, TEST_ADMIN_KEY};

/// The browser speaks plain HTTP to `dev` (it would not trust the throwaway CA).
const INSECURE: &[(&str, &str)] = &[("TANVRIT_DEV_INSECURE", "true")];
const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn shot(name: &str) -> PathBuf {
    let dir = if std::env::var_os("TANVRIT_UPDATE_SCREENSHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/console")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots")
    };
    dir.join(format!("{name}.png"))
}

async fn sign_in(browser: &Browser, url: &str, key: &str) {
    browser.client.goto(&format!("{url}/ui/")).await.unwrap();
    let input = browser.client.find(Locator::Id("key")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(key).await.unwrap();
    browser
        .client
        .find(Locator::Id("sign-in-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn cli(url: &str, key: &str, args: &[&str]) -> serde_json::Value {
    let output = tokio::process::Command::new(BIN)
        .env_remove("TANVRIT_BUSINESS")
        .env("TANVRIT_ADDR", url)
        .env("TANVRIT_API_KEY", key)
        .arg("--json")
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_follows_jobs_live_and_cancels_one() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // `dev`: a local agent runs the jobs, and business `default` has credits.
    let dev = ServerProcess::start_mode(Path::new(BIN), "dev", &dir.path().join("data"), INSECURE)
        .await
        .unwrap();
    let url = dev.url().trim_end_matches('/').to_string();
    let browser = Browser::start(1100, 800).await.unwrap();

    // A wrong key is refused in words.
    sign_in(&browser, &url, "tvk-not-a-key-0123456789").await;
    let error = browser
        .wait_text("#sign-in-error", "the sign-in error", |t| !t.is_empty())
        .await;
    assert!(error.contains("not accepted"), "{error}");
    browser.screenshot(&shot("sign-in-error")).await;

    sign_in(&browser, &url, TEST_ADMIN_KEY).await;
    browser
        .wait_text("#page h1", "the jobs page", |t| t == "Jobs")
        .await;

    // Submitted from the CLI, it appears and succeeds on the open page: no reload.
    let submitted = cli(
        &url,
        TEST_ADMIN_KEY,
        &["job", "submit", "--shell", "echo hello-console"],
    )
    .await;
    let id = submitted["job"]["id"].as_str().unwrap().to_string();
    let row = format!("tr[data-job='{id}'] td:nth-child(2)");
    browser
        .wait_text(&row, "the job to succeed on the list", |t| t == "succeeded")
        .await;
    browser.screenshot(&shot("jobs")).await;

    // Its page shows the attempt and the output.
    browser
        .client
        .goto(&format!("{url}/ui/#/job/{id}"))
        .await
        .unwrap();
    browser
        .wait_text("#job-log", "the job's output", |t| {
            t.contains("hello-console")
        })
        .await;
    browser.screenshot(&shot("job")).await;

    // A running job is cancelled from its page.
    let long = cli(
        &url,
        TEST_ADMIN_KEY,
        &["job", "submit", "--", "sleep", "300"],
    )
    .await;
    let long = long["job"]["id"].as_str().unwrap().to_string();
    browser
        .client
        .goto(&format!("{url}/ui/#/job/{long}"))
        .await
        .unwrap();
    browser
        .wait_text("#job-state", "the job to run", |t| t == "running")
        .await;
    browser
        .client
        .find(Locator::Id("job-cancel"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_text("#job-state", "the job to be cancelled", |t| {
            t == "cancelled"
        })
        .await;

    browser
        .client
        .goto(&format!("{url}/ui/#/nodes"))
        .await
        .unwrap();
    browser
        .wait_text("#nodes-body", "the local agent's node", |t| {
            t.contains("ready")
        })
        .await;
    browser.screenshot(&shot("nodes")).await;

    // Credits: the balance and the ledger of a business (holds and charges of the jobs).
    browser
        .client
        .goto(&format!("{url}/ui/#/credits"))
        .await
        .unwrap();
    let input = browser
        .client
        .find(Locator::Id("credits-business"))
        .await
        .unwrap();
    input.send_keys("default").await.unwrap();
    browser
        .client
        .find(Locator::Id("credits-show"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_text("#credits-balance", "the balance", |t| {
            t.starts_with("default: ")
        })
        .await;
    browser
        .wait_text("#credits-body", "the ledger", |t| t.contains("charge"))
        .await;
    browser.screenshot(&shot("credits")).await;
    browser
        .client
        .goto(&format!("{url}/ui/#/keys"))
        .await
        .unwrap();
    browser
        .wait_text("#keys-body", "the admin key", |t| t.contains("admin"))
        .await;
    browser
        .client
        .goto(&format!("{url}/ui/#/cluster"))
        .await
        .unwrap();
    browser
        .wait_text("#cluster-counts", "the job counts", |t| {
            t.contains("succeeded")
        })
        .await;

    // A user key of another business sees none of `default`'s jobs.
    let admin = dev.admin_client(3);
    let rival = admin
        .create_key(KeyCreateRequest {
            name: Some("rival".into()),
            scope: Scope::User,
            business: Some("rival".into()),
            node: None,
        })
        .await
        .unwrap()
        .secret;
    browser.client.goto(&format!("{url}/ui/")).await.unwrap();
    browser
        .client
        .find(Locator::Id("sign-out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    sign_in(&browser, &url, &rival).await;
    browser
        .wait_text("#page h1", "the rival's jobs page", |t| t == "Jobs")
        .await;
    // A job of `default` submitted now, then one of the rival's: events come in log
    // order, so once the rival's row is there, the other job's event has been passed.
    admin
        .create_credit_entry(tanvrit_api::CreditEntryCreateRequest {
            business: "rival".into(),
            kind: tanvrit_api::EntryKind::TopUp,
            amount: 1_000_000_000,
            idempotency_key: Some("rival-top-up".into()),
            note: None,
        })
        .await
        .unwrap();
    let job = |business: Option<&str>| JobSubmitRequest {
        business: business.map(Into::into),
        spec: JobSpec {
            command: vec!["true".into()],
            ..JobSpec::default()
        },
        idempotency_key: None,
    };
    admin.submit_job(job(Some("default"))).await.unwrap();
    let theirs = dev
        .client(&rival, 3)
        .submit_job(job(None))
        .await
        .unwrap()
        .job
        .id;
    browser
        .wait_text(
            &format!("tr[data-job='{theirs}'] td:nth-child(3)"),
            "the rival's own job",
            |t| t == "rival",
        )
        .await;
    let businesses = browser
        .client
        .find_all(Locator::Css("#jobs-body tr td:nth-child(3)"))
        .await
        .unwrap();
    for cell in businesses {
        assert_eq!(
            cell.text().await.unwrap(),
            "rival",
            "another business's job shown"
        );
    }
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topology_page_shows_a_new_leader_after_the_leader_is_killed() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ProcessCluster::start_funded(
        Path::new(BIN),
        dir.path(),
        3,
        "acme",
        Duration::from_secs(60),
    )
    .await;
    let leader = cluster.leader(Duration::from_secs(60)).await.unwrap();
    let watcher = (leader + 1) % 3;
    let url = cluster.urls()[watcher].trim_end_matches('/').to_string();
    let browser = Browser::start(1100, 800).await.unwrap();
    sign_in(&browser, &url, TEST_ADMIN_KEY).await;
    browser
        .wait_text("#page h1", "the jobs page", |t| t == "Jobs")
        .await;
    browser
        .client
        .goto(&format!("{url}/ui/#/cluster"))
        .await
        .unwrap();
    let old = format!("Leader: replica-{}", leader + 1);
    browser
        .wait_text("#cluster-leader", "the first leader", |t| {
            t.starts_with(&old)
        })
        .await;
    browser.screenshot(&shot("cluster")).await;

    cluster.replica_mut(leader).kill9().await;
    let shown = browser
        .wait_text("#cluster-leader", "a new leader", |t| {
            t.starts_with("Leader: replica-") && !t.starts_with(&old)
        })
        .await;
    let new = cluster.leader(Duration::from_secs(30)).await.unwrap();
    assert!(
        shown.starts_with(&format!("Leader: replica-{}", new + 1)),
        "{shown}"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_fits_a_phone_screen_and_signs_in_by_keyboard() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let dev = ServerProcess::start_mode(Path::new(BIN), "dev", &dir.path().join("data"), INSECURE)
        .await
        .unwrap();
    let url = dev.url().trim_end_matches('/').to_string();
    cli(
        &url,
        TEST_ADMIN_KEY,
        &["job", "submit", "--shell", "echo from-a-phone"],
    )
    .await;
    let browser = Browser::phone(390, 844).await.unwrap();
    browser.client.goto(&format!("{url}/ui/")).await.unwrap();
    // The key field has the focus; typing the key and Enter signs in.
    let focused = browser
        .client
        .execute("return document.activeElement.id", vec![])
        .await
        .unwrap();
    assert_eq!(focused, "key");
    browser
        .client
        .find(Locator::Id("key"))
        .await
        .unwrap()
        .send_keys(&format!("{TEST_ADMIN_KEY}\u{E007}"))
        .await
        .unwrap();
    browser
        .wait_text("#jobs-body", "the job on a phone", |t| !t.is_empty())
        .await;
    let fits = browser
        .client
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(fits, true, "the jobs page scrolls sideways on a phone");
    let width = browser
        .client
        .execute("return window.innerWidth", vec![])
        .await
        .unwrap();
    assert_eq!(width, 390, "the phone's screen is emulated");
    browser.screenshot(&shot("phone-jobs")).await;
    browser.close().await;
}
