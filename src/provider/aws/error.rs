//! AWS errors: every failure names the region, the API call and AWS's own code and message, plus what to do.

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use thiserror::Error;

use crate::transfer::{Stopped, Verdict};

/// Why an AWS upload failed.
#[derive(Debug, Error)]
pub enum AwsError {
    /// No credentials in the standard chain.
    #[error(
        "no AWS credentials found ({reason}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run \
         on a machine with an instance or task role"
    )]
    NoCredentials {
        /// What the credential chain said.
        reason: String,
    },
    /// An API call failed.
    #[error("AWS {region}: {operation} failed: {message}{hint}")]
    Call {
        /// The region.
        region: String,
        /// The API operation.
        operation: &'static str,
        /// AWS's code and message, or the transport error.
        message: String,
        /// What to do, prefixed with a newline and indentation, or empty.
        hint: String,
    },
    /// An AMI of the same name exists and `replace = false`.
    #[error(
        "AWS {region}: an image named \"{name}\" already exists ({ami})\n       \
         (set `replace = true` to replace it, or bump the version with -i)"
    )]
    Duplicate {
        /// The region.
        region: String,
        /// The AMI name.
        name: String,
        /// The existing AMI.
        ami: String,
    },
    /// Something did not reach the expected state in time, or reached a failed state.
    #[error("AWS {region}: {what}")]
    State {
        /// The region.
        region: String,
        /// What happened.
        what: String,
    },
    /// The configuration cannot name the variant's images at any version.
    #[error("{0}")]
    Lifecycle(String),
    /// Reading the image failed.
    #[error("reading the image at offset {offset}: {source}")]
    Read {
        /// Where.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The user interrupted the run; everything created was removed.
    #[error("interrupted")]
    Interrupted,
}

/// Error codes AWS uses for throttling and transient server trouble.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "InternalError",
    "InternalServerError",
    "InternalServerException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Throttling, 5xx, timeouts and transport errors are retried; everything else (access denied, validation) is not.
pub fn verdict<E: ProvideErrorMetadata>(err: &SdkError<E>) -> Verdict {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => Verdict::Retry,
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = err.code().unwrap_or_default();
            if status >= 500 || status == 429 || TRANSIENT_CODES.contains(&code) {
                match ctx.raw().headers().get("retry-after").and_then(crate::transfer::parse_retry_after) {
                    Some(pause) => Verdict::RetryAfter(pause),
                    None => Verdict::Retry,
                }
            } else {
                Verdict::Fail
            }
        }
        _ => Verdict::Fail,
    }
}

/// The code and message of an SDK error, or its full error chain for non-service errors.
pub fn describe<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(err: &SdkError<E>) -> String {
    match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => format!("{}", aws_smithy_types::error::display::DisplayErrorContext(err)),
    }
}

/// Whether the error is AWS saying no.
pub fn is_access_denied<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    let code = err.code().unwrap_or_default();
    code.contains("AccessDenied") || code == "UnauthorizedOperation" || code == "UnauthorizedException"
}

/// Whether the error says the resource does not exist.
pub fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    let code = err.code().unwrap_or_default();
    code.contains("NotFound")
        || code == "InvalidAMIID.Unavailable"
        || code == "NoSuchKey"
        || code == "NoSuchBucket"
        || code == "NoSuchUpload"
}

/// Builds an [`AwsError::Call`].
pub fn call<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    region: &str,
    operation: &'static str,
    err: &SdkError<E>,
) -> AwsError {
    AwsError::Call { region: region.to_string(), operation, message: describe(err), hint: String::new() }
}

/// Builds an [`AwsError::Call`] with a hint line.
pub fn call_with_hint<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    region: &str,
    operation: &'static str,
    err: &SdkError<E>,
    hint: &str,
) -> AwsError {
    AwsError::Call { region: region.to_string(), operation, message: describe(err), hint: format!("\n       ({hint})") }
}

/// Turns a stopped bounded run or poll into an [`AwsError`]; `what` says what was being waited for.
pub fn stopped(region: &str, what: &str, stopped: Stopped<AwsError>) -> AwsError {
    match stopped {
        Stopped::Failed(e) => e,
        Stopped::Interrupted => AwsError::Interrupted,
        Stopped::TimedOut => AwsError::State { region: region.into(), what: format!("timed out waiting for {what}") },
        Stopped::Panicked(message) => AwsError::State { region: region.into(), what: format!("{what}: {message}") },
    }
}
