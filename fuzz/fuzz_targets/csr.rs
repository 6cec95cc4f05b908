//! Certificate signing requests, as the CA server signs them for a join or a
//! renewal: anything may come in; only a CSR for exactly the expected identity is
//! signed, and the identity a node join reads from a CSR is one the CA would sign.
#![no_main]
use flotilla_pki::{CertificateAuthority, Identity, Role, Validity, csr_identity};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Duration;

fn ca() -> &'static (CertificateAuthority, Identity) {
    static CA: OnceLock<(CertificateAuthority, Identity)> = OnceLock::new();
    CA.get_or_init(|| {
        let ca = CertificateAuthority::create("fuzz").expect("a CA");
        let identity = Identity::new("fuzz", "c1", Role::Agent).expect("an identity");
        (ca, identity)
    })
}

fuzz_target!(|csr: &[u8]| {
    let (ca, identity) = ca();
    let validity = Validity::from_now(Duration::from_secs(3600));
    if let Ok(chain) = ca.sign_csr(csr, identity, validity) {
        let signed =
            Identity::from_cert(&chain[0]).expect("a signed certificate names its identity");
        assert_eq!(
            &signed, identity,
            "a certificate for another identity was signed"
        );
    }
    if let Ok(asked) = csr_identity(csr) {
        assert_eq!(
            Identity::parse_uri(&asked.uri()).expect("an identity read from a CSR reparses"),
            asked
        );
    }
});
