//! The checked-in CRD must be exactly what `relaycache-operator crdgen`
//! prints, so `kubectl apply -f crds/` installs what the operator expects.

use std::path::Path;
use std::process::Command;

use relaycache_operator::crd::CRD_FILE;

#[test]
fn checked_in_crd_is_what_crdgen_prints() {
    let output = Command::new(env!("CARGO_BIN_EXE_relaycache-operator"))
        .arg("crdgen")
        .output()
        .expect("run relaycache-operator crdgen");
    assert!(
        output.status.success(),
        "crdgen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).expect("crdgen prints UTF-8");
    assert_eq!(
        printed,
        relaycache_operator::crd::crd_yaml().unwrap(),
        "crdgen prints crd_yaml()"
    );

    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crds")
        .join(CRD_FILE);
    let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "cannot read {}: {err}; run `make crds` and commit the file",
            path.display()
        )
    });
    assert!(
        on_disk == printed,
        "crds/{CRD_FILE} is stale (it differs from `relaycache-operator crdgen`): run `make crds` and commit the result"
    );
}
