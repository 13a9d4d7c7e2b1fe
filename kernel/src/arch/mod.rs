//! Architecture layer. Only x86-64 exists; generic code uses the names re-exported here.

mod x86_64;

pub use self::x86_64::*;
