//! The operator's integration tests, in one binary (linked once): the
//! checked-in CRD, the webhook against recorded AdmissionReviews, and the
//! webhook over real HTTPS.

mod crd_file;
mod webhook_admission;
mod webhook_server;
