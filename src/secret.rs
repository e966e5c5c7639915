//! What must never reach a log: [`Secret`], the one type every secret
//! (key-hashing secret, admin-token secret, Redis password) is held in,
//! and [`redact_url`], the one redactor every logged URL goes through
//! (database and Redis alike).
//!
//! May depend on: std only; every module may use it.

use std::fmt;

/// Secret bytes that never show in `Debug` output, logs or errors.
///
/// A secret given in an environment variable or on the command line is its
/// raw UTF-8 bytes, not decoded and not trimmed, so `openssl rand -hex 32`
/// gives a 64-byte secret and a trailing newline counts; `sluice token` and
/// the server read it the same way.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// The secret bytes; keep them out of logs and errors.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text, when it is UTF-8 (always, for one given in the
    /// environment or on the command line).
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for Secret {
    fn from(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Secret {
        Secret(text.into_bytes())
    }
}

/// The raw bytes of the text, so clap can fill a `Secret` field from a
/// flag or an environment variable.
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.as_bytes().to_vec()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Query parameters whose values are hidden: any name containing one of
/// these, in any case (`password`, `sslpassword`, `sentinelPassword`,
/// `client_secret`, `token`, ...).
const SECRET_PARAMS: [&str; 4] = ["password", "passwd", "secret", "token"];

/// `url` with every password replaced by `***`, for logs and errors: the
/// userinfo's password (userinfo without a `:` is hidden whole: it is
/// often a password written in the user's place) and the value of every
/// query parameter named like a secret ([`SECRET_PARAMS`]). Text that is
/// not a URL shows only its length.
pub fn redact_url(url: &str) -> String {
    let rest_start = match url.find("://") {
        Some(scheme_end) => scheme_end + 3,
        // `sqlite:path`: no authority, so no userinfo.
        None if url.starts_with("sqlite:") => "sqlite:".len(),
        None => return format!("<unparsable URL, {} bytes>", url.len()),
    };
    let rest = &url[rest_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_start]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str("***"),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[authority_len..];
    let Some(q) = tail.find('?') else {
        out.push_str(tail);
        return out;
    };
    out.push_str(&tail[..=q]);
    let query = &tail[q + 1..];
    let (query, fragment) = match query.find('#') {
        Some(h) => (&query[..h], &query[h..]),
        None => (query, ""),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| {
            let (name, _) = pair.split_once('=').unwrap_or((pair, ""));
            let lower = name.to_ascii_lowercase();
            if pair.contains('=') && SECRET_PARAMS.iter().any(|s| lower.contains(s)) {
                format!("{name}=***")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    out.push_str(&pairs.join("&"));
    out.push_str(fragment);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_every_password() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:pw@host:1/2", "redis://:***@host:1/2"),
            ("rediss://user:pw@host", "rediss://user:***@host"),
            ("redis://pw@host", "redis://***@host"),
            ("redis://u:p@ss@host/0", "redis://u:***@host/0"),
            (
                "redis-cluster://u:pw@a:1?node=b:2&node=c:3",
                "redis-cluster://u:***@a:1?node=b:2&node=c:3",
            ),
            (
                "redis-sentinel://:pw@s:26379/0?sentinelServiceName=m&sentinelPassword=spw&node=t:1",
                "redis-sentinel://:***@s:26379/0?sentinelServiceName=m&sentinelPassword=***&node=t:1",
            ),
            (
                "postgres://app:hunter2@db:5432/sluice",
                "postgres://app:***@db:5432/sluice",
            ),
            (
                "postgres://app@db/sluice?password=hunter2&sslmode=require",
                "postgres://***@db/sluice?password=***&sslmode=require",
            ),
            (
                "postgresql://db/sluice?user=app&PassWord=hunter2&sslpassword=k#frag",
                "postgresql://db/sluice?user=app&PassWord=***&sslpassword=***#frag",
            ),
            (
                "postgres://db/x?application_name=a&auth_token=t",
                "postgres://db/x?application_name=a&auth_token=***",
            ),
            ("postgres://db/x?password", "postgres://db/x?password"),
            ("sqlite://data/sluice.db", "sqlite://data/sluice.db"),
            (
                "sqlite:data/sluice.db?mode=rwc",
                "sqlite:data/sluice.db?mode=rwc",
            ),
            ("not a url :pw@", "<unparsable URL, 14 bytes>"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn secrets_never_print_and_parse_as_raw_bytes() {
        let s: Secret = "hunter2-hunter2\n".parse().unwrap();
        assert_eq!(s.expose(), b"hunter2-hunter2\n");
        assert_eq!(s.expose_str(), Some("hunter2-hunter2\n"));
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(
            format!("{:?}", Some(Secret::new(vec![1, 2]))),
            "Some(Secret(***))"
        );
        let e: Secret = "é".parse().unwrap();
        assert_eq!(e.expose(), [0xc3, 0xa9]);
        assert_eq!(Secret::new(vec![0xff]).expose_str(), None);
    }
}
