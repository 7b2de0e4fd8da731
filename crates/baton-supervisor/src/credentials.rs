//! The user workers and build steps run as (`--user`, `--group`), while
//! baton itself stays root to bind: looked up here, before any fork, since
//! `getpwnam_r` and `getgrouplist` read files, may ask NSS daemons and
//! allocate, none of which a child may do between fork and exec. The child
//! only calls `setgroups`, `setgid`, `setuid`, in that order (see
//! [`spawn`](crate::spawn)).

use std::ffi::{CString, OsString};
use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User};

/// Who the workers are: ids resolved, and what their environment says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user's name in the user database.
    pub name: String,
    /// The user's home directory (`HOME`).
    pub home: PathBuf,
    /// The user id.
    pub uid: u32,
    /// The primary group id: `--group`'s, else the user's own.
    pub gid: u32,
    /// Every group the process has: the primary group and each group that
    /// lists the user (`getgrouplist`, as `initgroups` and systemd's
    /// `User=`/`Group=` do).
    pub groups: Vec<u32>,
    /// The group as named, if `--group` was given (for `baton check`).
    pub group_name: Option<String>,
}

/// Why the workers' user cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// No such user.
    #[error(
        "user '{0}' does not exist (`getent passwd {0}` finds nothing): create it (useradd --system {0}), or name another one"
    )]
    NoUser(String),
    /// No such group.
    #[error(
        "group '{0}' does not exist (`getent group {0}` finds nothing): create it, or name another one"
    )]
    NoGroup(String),
    /// A group without a user.
    #[error(
        "a group ('{0}') is given (--group, `group`, BATON_GROUP) but no user: it is the group of --user's workers; add --user (or `user`, BATON_USER)"
    )]
    GroupWithoutUser(String),
    /// The user database could not be read.
    #[error("cannot look up {what} '{name}': {source}")]
    Lookup {
        /// `user` or `group`.
        what: &'static str,
        /// As given.
        name: String,
        /// The error.
        source: nix::Error,
    },
    /// baton is not root, so it cannot start processes as another user.
    #[error(
        "--user {0} needs baton to run as root (it binds the sockets, then starts the workers as that user): start baton as root, or leave out --user"
    )]
    NotRoot(String),
}

impl Credentials {
    /// Resolve `user` (a name, or a uid) and `group` (a name, or a gid;
    /// the user's own group when `None`). `Ok(None)` when neither is given.
    pub fn lookup(
        user: Option<&str>,
        group: Option<&str>,
    ) -> Result<Option<Credentials>, CredentialsError> {
        let user = match (user, group) {
            (None, None) => return Ok(None),
            (None, Some(group)) => return Err(CredentialsError::GroupWithoutUser(group.into())),
            (Some(user), _) => user,
        };
        let lookup = |what, source| CredentialsError::Lookup {
            what,
            name: user.to_owned(),
            source,
        };
        let found = match User::from_name(user).map_err(|e| lookup("user", e))? {
            Some(found) => found,
            None => match user.parse::<u32>() {
                Ok(uid) => User::from_uid(Uid::from_raw(uid))
                    .map_err(|e| lookup("user", e))?
                    .ok_or_else(|| CredentialsError::NoUser(user.to_owned()))?,
                Err(_) => return Err(CredentialsError::NoUser(user.to_owned())),
            },
        };
        let gid = match group {
            None => found.gid,
            Some(name) => group_id(name)?,
        };
        let c_name = CString::new(found.name.clone())
            .map_err(|_| CredentialsError::NoUser(user.to_owned()))?;
        let groups =
            nix::unistd::getgrouplist(&c_name, gid).map_err(|e| lookup("the groups of user", e))?;
        let mut groups: Vec<u32> = groups.into_iter().map(Gid::as_raw).collect();
        groups.sort_unstable();
        groups.dedup();
        Ok(Some(Credentials {
            name: found.name,
            home: found.dir,
            uid: found.uid.as_raw(),
            gid: gid.as_raw(),
            groups,
            group_name: group.map(str::to_owned),
        }))
    }

    /// Refuse unless baton runs as root, which alone may start processes
    /// as another user.
    pub fn require_root(&self) -> Result<(), CredentialsError> {
        if nix::unistd::geteuid().is_root() {
            Ok(())
        } else {
            Err(CredentialsError::NotRoot(self.name.clone()))
        }
    }

    /// `HOME`, `USER` and `LOGNAME` of the user, as login(1) and systemd's
    /// `User=` set them: baton's own would name root.
    pub fn environment(&self) -> [(OsString, OsString); 3] {
        [
            ("HOME".into(), self.home.clone().into_os_string()),
            ("USER".into(), self.name.clone().into()),
            ("LOGNAME".into(), self.name.clone().into()),
        ]
    }
}

/// The id of the group `name` (a name, or a gid).
fn group_id(name: &str) -> Result<Gid, CredentialsError> {
    let lookup = |source| CredentialsError::Lookup {
        what: "group",
        name: name.to_owned(),
        source,
    };
    if let Some(group) = Group::from_name(name).map_err(lookup)? {
        return Ok(group.gid);
    }
    match name.parse::<u32>() {
        Ok(gid) => Group::from_gid(Gid::from_raw(gid))
            .map_err(lookup)?
            .map(|group| group.gid)
            .ok_or_else(|| CredentialsError::NoGroup(name.to_owned())),
        Err(_) => Err(CredentialsError::NoGroup(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_by_name_and_by_id() {
        let by_name = Credentials::lookup(Some("root"), None).unwrap().unwrap();
        assert_eq!((by_name.uid, by_name.gid), (0, 0));
        assert!(by_name.groups.contains(&0));
        assert_eq!(by_name.name, "root");
        let by_id = Credentials::lookup(Some("0"), Some("0")).unwrap().unwrap();
        assert_eq!((by_id.uid, by_id.gid, &by_id.name), (0, 0, &by_name.name));
        let env = by_name.environment();
        assert_eq!(env[1], ("USER".into(), "root".into()));
        assert_eq!(env[2], ("LOGNAME".into(), "root".into()));
        assert_eq!(env[0].0, "HOME");
    }

    #[test]
    fn nothing_given_is_nobody_and_mistakes_are_named() {
        assert_eq!(Credentials::lookup(None, None).unwrap(), None);
        let err = Credentials::lookup(Some("no-such-user-baton"), None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("user 'no-such-user-baton' does not exist"),
            "{err}"
        );
        let err = Credentials::lookup(Some("root"), Some("no-such-group-baton")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("group 'no-such-group-baton' does not exist"),
            "{err}"
        );
        let err = Credentials::lookup(None, Some("root")).unwrap_err();
        assert!(
            matches!(err, CredentialsError::GroupWithoutUser(_)),
            "{err}"
        );
        // A uid that no user has is not a user either.
        assert!(matches!(
            Credentials::lookup(Some("4000000000"), None),
            Err(CredentialsError::NoUser(_))
        ));
    }
}
