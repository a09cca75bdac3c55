//! The limits every HTTP request is answered under (DESIGN §10).

use std::time::Duration;

/// Request bodies larger than this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Time to produce a response's head (not to stream an asset).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
