//! The drift report in a real browser.
