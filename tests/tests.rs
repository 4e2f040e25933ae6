//! driftless integration tests.

/// The error type of the engine and reliability tests and their helpers: anything, across
/// threads.
pub(crate) type TestError = Box<dyn std::error::Error + Send + Sync>;
/// The result type of the engine and reliability tests and their helpers.
pub(crate) type TestResult<T = ()> = Result<T, TestError>;

// Defined before the modules, so that every module below can use them.
/// Fails the enclosing function (which returns a [`TestResult`]) with a message.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

/// Fails the enclosing function unless both sides are equal.
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($msg:tt)+) => {
        match (&$left, &$right) {
            (left, right) => {
                if left != right {
                    return Err(format!("{}: {:?} != {:?}", format!($($msg)+), left, right).into());
                }
            }
        }
    };
}

mod corruption_campaign;
mod engine;
mod reliability;
mod storage;
mod upgrade;
