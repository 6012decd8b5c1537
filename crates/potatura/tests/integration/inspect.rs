//! Parameter and MAC counts agree with the counts torch made when the
//! fixtures were generated.

use potatura::ir::resolve_input_shapes;

use super::common::{fixtures, manifest};

#[test]
fn macs_match_torch_counts_on_every_family() {
    let man = manifest();
    let mut checked = 0;
    for (file, entry) in man.as_object().unwrap() {
        let Some(want) = entry.get("macs").and_then(|v| v.as_u64()) else {
            continue;
        };
        // Deliberately not computable (custom op; If with a local function).
        if file.starts_with("unknown_op") || file.starts_with("meta_subgraph") {
            continue;
        }
        let model = potatura::onnx::load(&fixtures().join(file)).unwrap();
        let shapes = resolve_input_shapes(&model, &[]).unwrap();
        let s =
            potatura::report::summarize(&model, &shapes).unwrap_or_else(|e| panic!("{file}: {e}"));
        let rel = (s.macs as f64 - want as f64).abs() / want as f64;
        assert!(rel <= 0.02, "{file}: {} MACs, torch counted {want}", s.macs);
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} fixtures carry MAC counts");
}
