//! Secrets the config names but should not hold: a broker password from a
//! file (`password_file`) or from the environment (`password_env`), and the
//! admin API's bearer token (`[admin] token_file`).
//!
//! They are read when the config is loaded, so also on every reload: a
//! rotated password file is picked up by `ferry reload` or SIGHUP. Each value
//! goes straight into a [`Secret`]; no message made here contains one, only
//! the key, the file or the variable it came from. A file that others than
//! its owner can read is accepted with a warning.

use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::error::{line_of, Problem};
use super::raw::RawCredentials;
use crate::secret::Secret;

/// A secret file holds one password or token: anything larger is not one
/// (and `/dev/zero` is not read forever).
const MAX_SECRET_FILE_BYTES: u64 = 64 << 10;

/// Whether loading a config reads the broker passwords it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Passwords {
    /// Read `password_file` and `password_env` (`ferry run`, `ferry check`).
    Read,
    /// Check how they are written but leave them unread, so a command that
    /// never connects to a broker (`ferry status`, `ferry queue ...`) works
    /// from a shell without ferry's environment or its password files. The
    /// admin token is read either way: the admin client sends it.
    Skip,
}

/// Where a connection's password comes from: what `ferry check` shows instead
/// of the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PasswordSource {
    Inline,
    File(PathBuf),
    Env(String),
}

impl PasswordSource {
    pub(crate) fn describe(&self) -> String {
        match self {
            PasswordSource::Inline => "password in the config file".to_owned(),
            PasswordSource::File(path) => format!("password from file {}", path.display()),
            PasswordSource::Env(name) => format!("password from ${name}"),
        }
    }
}

/// A connection's username and password, as validated.
#[derive(Debug, Clone, Default)]
pub(super) struct Credentials {
    pub(super) username: Option<String>,
    /// None also when [`Passwords::Skip`] left a file or variable unread.
    pub(super) password: Option<Secret>,
    pub(super) source: Option<PasswordSource>,
}

/// What reading secrets needs from the file being validated.
pub(super) struct SecretReader<'a> {
    pub(super) text: &'a str,
    /// Relative secret paths are relative to the config file's directory.
    pub(super) config_dir: &'a Path,
    pub(super) passwords: Passwords,
}

impl SecretReader<'_> {
    /// Checks the credential keys of one connection and reads its password.
    /// MQTT sends a password only with a username, and one password can be
    /// given only one way.
    pub(super) fn credentials(
        &self,
        raw: RawCredentials<'_>,
        warnings: &mut Vec<Problem>,
    ) -> Result<Credentials, Problem> {
        let given: Vec<(&str, &Spanned<String>)> = [
            ("password", raw.password),
            ("password_file", raw.password_file),
            ("password_env", raw.password_env),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.as_ref().map(|value| (key, value)))
        .collect();
        if let [(first_key, first), (second_key, second), ..] = given.as_slice() {
            return Err(Problem::at(
                second.span(),
                format!(
                    "{second_key} and {first_key} (line {}) are both set; give the password one way only: \
                     password_file, password_env or password",
                    line_of(self.text, &first.span())
                ),
            ));
        }
        let username = raw.username.as_ref().map(|name| name.get_ref().clone());
        let Some(&(key, value)) = given.first() else {
            return Ok(Credentials {
                username,
                ..Credentials::default()
            });
        };
        if username.is_none() {
            return Err(Problem::at(
                value.span(),
                format!("{key} is set without username; MQTT sends a password only with a username"),
            ));
        }
        let (password, source) = match key {
            "password" => {
                warnings.push(Problem::at(
                    value.span(),
                    "password is written in the config file itself, so whoever can read the file (or a \
                     backup, or a paste of it) has it: prefer password_file or password_env \
                     (see docs/security.md)",
                ));
                (Some(Secret::new(value.get_ref().as_str())), PasswordSource::Inline)
            }
            "password_file" => {
                let path = self.path(key, value)?;
                let password = match self.passwords {
                    Passwords::Skip => None,
                    Passwords::Read => {
                        let content = self.read_file(key, value.span(), &path, warnings)?;
                        let password = content.trim_end_matches(['\n', '\r']);
                        if password.is_empty() {
                            return Err(Problem::at(
                                value.span(),
                                format!(
                                    "{key} {}: the file is empty; it must hold the password (trailing \
                                     newlines are ignored)",
                                    path.display()
                                ),
                            ));
                        }
                        Some(Secret::new(password))
                    }
                };
                (password, PasswordSource::File(path))
            }
            _ => {
                let name = value.get_ref();
                if name.is_empty() || name.contains(['=', '\0']) {
                    return Err(Problem::at(
                        value.span(),
                        format!("{key} must be the name of an environment variable, got {name:?}"),
                    ));
                }
                let password = match self.passwords {
                    Passwords::Skip => None,
                    Passwords::Read => Some(read_env(key, value)?),
                };
                (password, PasswordSource::Env(name.clone()))
            }
        };
        Ok(Credentials {
            username,
            password,
            source: Some(source),
        })
    }

    /// `[admin] token_file`: the bearer token, its surrounding whitespace
    /// trimmed. Read in both modes of [`Passwords`].
    pub(super) fn token(&self, raw: &Spanned<String>, warnings: &mut Vec<Problem>) -> Result<Secret, Problem> {
        let key = "token_file";
        let path = self.path(key, raw)?;
        let text = self.read_file(key, raw.span(), &path, warnings)?;
        token_in(&text).map_err(|why| Problem::at(raw.span(), format!("{key} {}: {why}", path.display())))
    }

    fn path(&self, key: &str, raw: &Spanned<String>) -> Result<PathBuf, Problem> {
        if raw.get_ref().trim().is_empty() {
            return Err(Problem::at(raw.span(), format!("{key} cannot be empty")));
        }
        Ok(self.config_dir.join(raw.get_ref()))
    }

    /// The text of a secret file; errors name the key, the file and the
    /// operating system's reason, never the content.
    fn read_file(
        &self,
        key: &str,
        span: Range<usize>,
        path: &Path,
        warnings: &mut Vec<Problem>,
    ) -> Result<String, Problem> {
        let problem = |why: String| Problem::at(span.clone(), format!("{key} {}: {why}", path.display()));
        let (text, mode) = read_secret_file(path).map_err(problem)?;
        if mode & 0o044 != 0 {
            warnings.push(problem(format!(
                "can be read by other users than its owner (mode {mode:03o}): chmod 600 {}",
                path.display()
            )));
        }
        Ok(text)
    }
}

/// The text of a small secret file and its permission bits; the error says
/// why it cannot be used (the operating system's reason), never what it holds.
fn read_secret_file(path: &Path) -> Result<(String, u32), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let metadata = file.metadata().map_err(|e| format!("cannot read it: {e}"))?;
    if !metadata.is_file() {
        return Err("is not a regular file".to_owned());
    }
    if metadata.len() > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "is {} bytes; a secret file holds one password or token (at most 64KiB)",
            metadata.len()
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_owned())?;
    Ok((text, metadata.permissions().mode() & 0o777))
}

/// A bearer token file: its content with surrounding whitespace trimmed,
/// which must not be empty.
pub(crate) fn token_from_file(path: &Path) -> Result<Secret, String> {
    token_in(&read_secret_file(path)?.0)
}

fn token_in(text: &str) -> Result<Secret, String> {
    match text.trim() {
        "" => Err("the file is empty; it must hold the admin API's bearer token".to_owned()),
        token => Ok(Secret::new(token)),
    }
}

fn read_env(key: &str, raw: &Spanned<String>) -> Result<Secret, Problem> {
    let name = raw.get_ref();
    let problem = |why: &str| Problem::at(raw.span(), format!("{key}: the environment variable {name} {why}"));
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Err(problem(
            "is not set; set it in ferry's environment (systemd: Environment= or EnvironmentFile=)",
        )),
        Err(std::env::VarError::NotUnicode(_)) => Err(problem("is not valid UTF-8")),
        Ok(value) if value.is_empty() => Err(problem("is set but empty; it must hold the password")),
        Ok(value) => Ok(Secret::new(value)),
    }
}
