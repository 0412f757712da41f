//! The GGUF reader on arbitrary bytes: a file edge-eval opens either reads as a model's metadata
//! and tensor table or is an error naming the file — never a panic or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("edge-eval-fuzz-{}.gguf", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(g) = runtime::gguf::Gguf::open(&path) {
        let _ = g.metadata_str("general.architecture");
        let _ = runtime::tokenizer::Tokenizer::from_gguf(&g);
    }
});
