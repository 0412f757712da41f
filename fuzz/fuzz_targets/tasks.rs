//! The task readers on arbitrary text, as each of the three record formats with either prompt
//! preset: every input is a
//! list of samples a stage can use (unique ids, something to send, something to score against)
//! or an error naming the file and line — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.jsonl");
    for (kind, preset) in ["extractive_qa", "summarize", "chat"]
        .into_iter()
        .flat_map(|k| [(k, "default"), (k, "paper")])
    {
        let prompting = edge_eval::tasks::Prompting::preset(preset, kind).expect("a known preset");
        match edge_eval::tasks::parse(text, file, kind, &prompting) {
            Ok(samples) => {
                assert!(!samples.is_empty(), "an empty task was accepted");
                let mut ids = HashSet::new();
                for s in &samples {
                    assert!(ids.insert(&s.id), "id {} accepted twice", s.id);
                    assert!(!s.messages.is_empty(), "a sample with nothing to send");
                    assert!(!s.references.is_empty(), "a sample with nothing to score");
                }
            }
            Err(e) => assert!(format!("{e:#}").contains("fuzz.jsonl"), "{e:#}"),
        }
    }
});
