//! What the PostgreSQL tests share: the `postgres` user instances run as, and the instance
//! manager's status over its command API.

/// The `postgres` user's uid and gid (Debian's postgresql package creates it): instances run as
/// it, as they would in a pod.
pub fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("the postgres user (Debian's postgresql package)");
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

/// `GET <api>/status` of an instance manager, or `None` while it does not answer.
pub async fn instance_status(http: &reqwest::Client, api: &str) -> Option<serde_json::Value> {
    http.get(format!("{api}/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}
