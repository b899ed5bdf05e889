//! A headless Chromium driven over WebDriver: Debian's `chromedriver` as a child
//! process on a free loopback port, and a [`fantoccini`] session to it. For the web
//! console's tests (feature `browser`).

use std::process::Stdio;
use std::time::{Duration, Instant};

pub use fantoccini::Locator;
use fantoccini::{Client, ClientBuilder};
use tokio::process::{Child, Command};

/// How long to wait for chromedriver to answer, and for a page to show something.
const PATIENCE: Duration = Duration::from_secs(30);

/// A browser session and the chromedriver behind it (killed on drop).
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    _driver: Child,
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium (`--no-sandbox`: tests run as root)
    /// with a `width` x `height` window.
    pub async fn start(width: u32, height: u32) -> std::io::Result<Browser> {
        Self::launch(width, height, None).await
    }

    /// Like [`Browser::start`], emulating a phone's `width` x `height` screen (a
    /// headless window is never narrower than 500 pixels).
    pub async fn phone(width: u32, height: u32) -> std::io::Result<Browser> {
        let metrics = serde_json::json!({
            "deviceMetrics": {"width": width, "height": height, "pixelRatio": 1.0, "touch": true},
        });
        Self::launch(500, height, Some(metrics)).await
    }

    async fn launch(
        width: u32,
        height: u32,
        mobile: Option<serde_json::Value>,
    ) -> std::io::Result<Browser> {
        let port = crate::process::ProcessCluster::free_port()?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                std::io::Error::other(format!(
                    "cannot start chromedriver (apt-get install chromium chromium-driver): {e}"
                ))
            })?;
        let mut options = serde_json::json!({"args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            format!("--window-size={width},{height}"),
        ]});
        if let Some(mobile) = mobile {
            options["mobileEmulation"] = mobile;
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let attempt = ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await;
            match attempt {
                Ok(client) => {
                    return Ok(Browser {
                        client,
                        _driver: driver,
                    })
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(std::io::Error::other(format!("no WebDriver session: {e}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Polls until `check` on the text of the element `css` holds; returns that text.
    /// Panics, naming `what` and the last text seen, after the patience runs out.
    pub async fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut last = String::new();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                if let Ok(text) = element.text().await {
                    if check(&text) {
                        return text;
                    }
                    last = text;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} (`{css}`); last text: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the window to `path` (its directory is created).
    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.expect("a screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot directory");
        }
        std::fs::write(path, png).expect("the screenshot is written");
    }

    /// Ends the session.
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
