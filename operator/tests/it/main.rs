//! The operator's integration tests, in one binary (linked once): the
//! checked-in CRD, the webhook against recorded AdmissionReviews, the
//! webhook over real HTTPS, and the purge call against a real member.

mod crd_file;
mod purge_member;
mod webhook_admission;
mod webhook_server;
