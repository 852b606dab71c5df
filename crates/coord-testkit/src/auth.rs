//! Users and roles for tests of etcd's authentication and RBAC.

use etcd_client::{Permission, PermissionType};

use crate::{Error, Etcd};

/// A user to create with [`enable_auth`]: a name, a password, and the key prefix its role may
/// read and write (`None`: a user with no role, who may read and write nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User<'a> {
    /// The user name (also the name of its role).
    pub name: &'a str,
    /// The password.
    pub password: &'a str,
    /// The prefix its role may read and write, if any.
    pub prefix: Option<&'a str>,
}

/// Creates `root` (password `root_password`, role `root`) and `users`, each with a role of its
/// own name granting read-write on its prefix, then turns authentication on. After this, clients
/// must log in (etcd-client: `ConnectOptions::with_user`).
///
/// # Errors
///
/// [`Error::Client`] when etcd refuses a step (for example, auth already enabled).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use coord_testkit::{Etcd, User, enable_auth};
///
/// let etcd = Etcd::start().await?;
/// enable_auth(&etcd, "rootpw", &[
///     User { name: "svc", password: "svcpw", prefix: Some("app/") },
///     User { name: "guest", password: "guestpw", prefix: None },
/// ]).await?;
/// # Ok(()) }
/// ```
pub async fn enable_auth(
    etcd: &Etcd,
    root_password: &str,
    users: &[User<'_>],
) -> Result<(), Error> {
    let step = |what: String| {
        move |e| Error::Client {
            context: what,
            source: e,
        }
    };
    let mut admin = etcd.client().await?;
    admin
        .user_add("root", root_password, None)
        .await
        .map_err(step("cannot add user root".into()))?;
    admin
        .user_grant_role("root", "root")
        .await
        .map_err(step("cannot make root root".into()))?;
    for user in users {
        admin
            .user_add(user.name, user.password, None)
            .await
            .map_err(step(format!("cannot add user {}", user.name)))?;
        if let Some(prefix) = user.prefix {
            admin
                .role_add(user.name)
                .await
                .map_err(step(format!("cannot add role {}", user.name)))?;
            admin
                .role_grant_permission(
                    user.name,
                    Permission::new(PermissionType::Readwrite, prefix).with_prefix(),
                )
                .await
                .map_err(step(format!("cannot grant {prefix} to role {}", user.name)))?;
            admin
                .user_grant_role(user.name, user.name)
                .await
                .map_err(step(format!("cannot give user {} its role", user.name)))?;
        }
    }
    admin
        .auth_enable()
        .await
        .map_err(step("cannot enable authentication".into()))?;
    Ok(())
}
