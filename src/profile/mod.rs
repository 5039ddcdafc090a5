//! A profile's state in and out of browsers: copies of a profile in browsers of their own
//! (`copy`), its cookies (`cookies`) and Playwright `storageState` documents
//! (`storage_state`). The profiles themselves are kept by `store::profiles`.

pub(crate) mod cookies;
pub(crate) mod copy;
pub(crate) mod storage_state;
