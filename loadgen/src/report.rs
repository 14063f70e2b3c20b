//! Latency reports: the files a load run leaves behind. The rendering is `tallyd`'s own
//! (`tallyd report` draws the daemon's stage histograms the same way).

pub use tallyman::report::*;
