//! Images: references, the OCI/Docker documents, a content-addressed store, layer
//! unpacking, registry pulls and tarball loads. Used by the CLI through the daemon and,
//! later, by the cluster agent.

pub mod load;
pub mod oci;
pub mod pull;
pub mod reference;
pub mod store;
pub mod unpack;
