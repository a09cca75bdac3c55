//! What carrying out an admin request means, for every place it runs.

use serde_json::Value;

use super::error::AdminError;
use super::request::Request;

/// What an admin operation answers: the JSON body, and whether the work
/// was only started (202: a prefetch runs in the background).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub body: Value,
    pub accepted: bool,
}

impl Answer {
    pub(super) fn done(body: Value) -> Answer {
        Answer {
            body,
            accepted: false,
        }
    }
}

/// Carries out admin [`Request`]s. One implementation per place the
/// operations can run; every one answers the same bodies and errors.
pub trait AdminService {
    fn call(
        &self,
        request: Request,
    ) -> impl std::future::Future<Output = Result<Answer, AdminError>> + Send;
}
