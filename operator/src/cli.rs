//! Command line of `relaycache-operator`; every `run` flag can also come
//! from the environment variable named in its help.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Kubernetes operator for RelayCache clusters.
#[derive(Debug, Parser)]
#[command(name = "relaycache-operator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// Parsed once at startup; boxing `RunArgs` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (with leader election) and the health endpoints.
    Run(RunArgs),
    /// Print the RelayCache CustomResourceDefinition as YAML.
    Crdgen,
}

/// Flags of `run`.
#[derive(Debug, Clone, Args, PartialEq, Eq)]
pub struct RunArgs {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: SocketAddr,
    /// HTTPS address of the mutating webhook (`/mutate-pods`).
    #[arg(long, env = "WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: SocketAddr,
    /// Where the webhook's serving certificate comes from.
    #[arg(long, env = "WEBHOOK_CERT_MODE", value_enum, default_value_t = CertMode::SelfSigned)]
    pub webhook_cert_mode: CertMode,
    /// Directory with `tls.crt`, `tls.key` and optionally `ca.crt` (mode `files`).
    #[arg(
        long,
        env = "WEBHOOK_CERT_DIR",
        default_value = "/etc/relaycache-operator/tls"
    )]
    pub webhook_cert_dir: PathBuf,
    /// Secret in the operator's namespace holding the self-signed CA and serving certificate.
    #[arg(long, env = "WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,
    /// Service name put in the certificate's DNS names.
    #[arg(long, env = "WEBHOOK_SERVICE")]
    pub webhook_service: Option<String>,
    /// MutatingWebhookConfiguration whose caBundle the operator patches.
    #[arg(long, env = "WEBHOOK_CONFIGURATION")]
    pub webhook_configuration: Option<String>,
    /// Extra DNS names or IPs (comma-separated) in the self-signed serving
    /// certificate, e.g. `localhost,127.0.0.1` when the apiserver calls a
    /// locally running operator by URL.
    #[arg(long, env = "WEBHOOK_EXTRA_SANS", value_delimiter = ',')]
    pub webhook_extra_sans: Vec<String>,
    /// The operator's own namespace (Lease, webhook Secret); default: the
    /// kubeconfig's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "relaycache-operator")]
    pub lease_name: String,
    /// Proxy image for RelayCaches that name none.
    #[arg(
        long,
        env = "RELAYCACHE_IMAGE",
        default_value = "relaycache/relaycache:0.1.0"
    )]
    pub default_image: String,
    /// How injected sidecars run: `auto` decides by the apiserver's version
    /// (native sidecars from 1.29), `always` and `never` override it, e.g.
    /// for clusters whose kubelets lag the apiserver or that turned the
    /// SidecarContainers feature off.
    #[arg(long, env = "NATIVE_SIDECARS", value_enum, default_value_t = NativeSidecars::Auto)]
    pub native_sidecars: NativeSidecars,
}

/// Whether the webhook injects a native sidecar (an init container with
/// `restartPolicy: Always`) or a regular container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NativeSidecars {
    /// Native from Kubernetes 1.29 on, by the apiserver's version.
    Auto,
    /// Always native.
    Always,
    /// Never: a regular container next to the app's.
    Never,
}

/// Source of the webhook's serving certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CertMode {
    /// Generate a CA and certificate, keep them in `--webhook-secret`.
    SelfSigned,
    /// Read them from `--webhook-cert-dir` (cert-manager).
    Files,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> RunArgs {
        let mut argv = vec!["relaycache-operator", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => args,
            Command::Crdgen => panic!("parsed as crdgen"),
        }
    }

    #[test]
    fn run_defaults_are_the_documented_addresses_lease_and_image() {
        let args = run_args(&[]);
        assert_eq!(args.health_addr, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(args.webhook_addr, "0.0.0.0:9443".parse().unwrap());
        assert_eq!(args.webhook_cert_mode, CertMode::SelfSigned);
        assert_eq!(
            args.webhook_cert_dir,
            PathBuf::from("/etc/relaycache-operator/tls")
        );
        assert_eq!(args.lease_name, "relaycache-operator");
        assert_eq!(args.default_image, "relaycache/relaycache:0.1.0");
        assert_eq!(args.native_sidecars, NativeSidecars::Auto);
    }

    #[test]
    fn every_run_flag_parses() {
        let args = run_args(&[
            "--health-addr",
            "127.0.0.1:18081",
            "--webhook-addr",
            "127.0.0.1:19443",
            "--webhook-cert-mode",
            "files",
            "--webhook-cert-dir",
            "/tls",
            "--webhook-secret",
            "op-tls",
            "--webhook-service",
            "op-webhook",
            "--webhook-configuration",
            "op-mutating",
            "--webhook-extra-sans",
            "localhost,127.0.0.1",
            "--namespace",
            "ops",
            "--lease-name",
            "lease-x",
            "--default-image",
            "img:1",
            "--native-sidecars",
            "never",
        ]);
        assert_eq!(args.health_addr, "127.0.0.1:18081".parse().unwrap());
        assert_eq!(args.webhook_cert_mode, CertMode::Files);
        assert_eq!(args.webhook_secret.as_deref(), Some("op-tls"));
        assert_eq!(args.webhook_service.as_deref(), Some("op-webhook"));
        assert_eq!(args.webhook_configuration.as_deref(), Some("op-mutating"));
        assert_eq!(args.webhook_extra_sans, ["localhost", "127.0.0.1"]);
        assert_eq!(args.namespace.as_deref(), Some("ops"));
        assert_eq!(args.lease_name, "lease-x");
        assert_eq!(args.default_image, "img:1");
        assert_eq!(args.native_sidecars, NativeSidecars::Never);
        assert!(Cli::try_parse_from(["relaycache-operator", "crdgen"]).is_ok());
        let err =
            Cli::try_parse_from(["relaycache-operator", "run", "--webhook-cert-mode", "acme"])
                .unwrap_err();
        assert!(err.to_string().contains("self-signed"), "{err}");
    }
}
