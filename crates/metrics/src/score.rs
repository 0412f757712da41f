//! Scorers: exact match and token F1 with SQuAD's answer normalisation (max over the gold
//! answers), and ROUGE-L F-measure tokenised as the `rouge-score` package does without stemming.
//! All are pure functions returning a score in 0–1.

use std::collections::HashMap;

/// SQuAD normalisation: lower case, punctuation removed, articles (a, an, the) removed,
/// whitespace collapsed.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn exact_match(prediction: &str, golds: &[String]) -> f64 {
    let p = normalize_answer(prediction);
    let hit = golds.iter().any(|g| normalize_answer(g) == p);
    if hit { 1.0 } else { 0.0 }
}

fn f1_one(prediction: &str, gold: &str) -> f64 {
    let p = normalize_answer(prediction);
    let g = normalize_answer(gold);
    let pt: Vec<&str> = p.split_whitespace().collect();
    let gt: Vec<&str> = g.split_whitespace().collect();
    if pt.is_empty() || gt.is_empty() {
        // SQuAD v2 convention: both empty = agreement, one empty = none.
        return if pt.is_empty() && gt.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &gt {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0;
    for t in &pt {
        if let Some(c) = counts.get_mut(t)
            && *c > 0
        {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / pt.len() as f64;
    let recall = common as f64 / gt.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Token F1, the best over the gold answers.
pub fn f1(prediction: &str, golds: &[String]) -> f64 {
    golds
        .iter()
        .map(|g| f1_one(prediction, g))
        .fold(0.0, f64::max)
}

/// `rouge-score`'s default tokenizer: lower case, every run of characters other than a–z and
/// 0–9 is a separator.
pub fn rouge_tokens(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L F-measure of a prediction against the best-matching reference.
pub fn rouge_l(prediction: &str, references: &[String]) -> f64 {
    let p = rouge_tokens(prediction);
    references
        .iter()
        .map(|r| {
            let t = rouge_tokens(r);
            if p.is_empty() || t.is_empty() {
                return 0.0;
            }
            let l = lcs_len(&t, &p) as f64;
            let (precision, recall) = (l / p.len() as f64, l / t.len() as f64);
            if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            }
        })
        .fold(0.0, f64::max)
}

/// The judge's fixed rubric. Changing it changes what scores mean: bump the `evaluate` stage's
/// version with it.
pub const JUDGE_RUBRIC: &str = "You are grading an answer against a reference.\n\nInput:\n{input}\n\nReference answer:\n{reference}\n\nCandidate answer:\n{candidate}\n\nHow well does the candidate answer match the reference in meaning and correctness? Reply with one digit from 1 (wrong or unrelated) to 5 (fully correct), and nothing else.";

/// Parses a judge's reply strictly: one digit 1–5, optionally followed by "/5" or a full stop,
/// nothing else. Returns the score in 0–1 ((n − 1) / 4), or None: an unparseable judgement is
/// null and counted, never a default score.
pub fn parse_judgement(reply: &str) -> Option<f64> {
    let t = reply.trim();
    let t = t.strip_suffix('.').unwrap_or(t);
    let t = t.strip_suffix("/5").unwrap_or(t).trim();
    match t {
        "1" | "2" | "3" | "4" | "5" => Some((t.parse::<f64>().ok()? - 1.0) / 4.0),
        _ => None,
    }
}

/// The scorers that classify (the record's context or document, the output) with an NLI model.
pub const NLI_SCORERS: &[&str] = &["nli_entail", "nli_not_contradict"];

pub fn is_nli(scorer: &str) -> bool {
    NLI_SCORERS.contains(&scorer)
}

/// The paper's NLI scores of a pair the classifier labelled `label`: `nli_entail` is 1 when the
/// source entails the output (its rag score), `nli_not_contradict` 1 unless the source
/// contradicts it (its summ score); else 0. None for another scorer.
pub fn nli_score(scorer: &str, label: &str) -> Option<f64> {
    let hit = match scorer {
        "nli_entail" => label == "entailment",
        "nli_not_contradict" => label != "contradiction",
        _ => return None,
    };
    Some(if hit { 1.0 } else { 0.0 })
}

/// Scores `prediction` with the named scorer (`exact_match`, `f1`, `rouge_l`).
pub fn score(scorer: &str, prediction: &str, references: &[String]) -> Option<f64> {
    Some(match scorer {
        "exact_match" => exact_match(prediction, references),
        "f1" => f1(prediction, references),
        "rouge_l" => rouge_l(prediction, references),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golds(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nli_scores_are_the_papers_entailment_and_non_contradiction() {
        let labels = ["entailment", "neutral", "contradiction"];
        let entail: Vec<_> = labels.map(|l| nli_score("nli_entail", l).unwrap()).into();
        let not_contra: Vec<_> = labels
            .map(|l| nli_score("nli_not_contradict", l).unwrap())
            .into();
        assert_eq!(entail, [1.0, 0.0, 0.0]);
        assert_eq!(not_contra, [1.0, 1.0, 0.0]);
        assert_eq!(nli_score("f1", "entailment"), None);
        assert!(is_nli("nli_entail") && !is_nli("judge"));
    }

    #[test]
    fn squad_normalisation() {
        assert_eq!(normalize_answer("The  Eiffel-Tower!"), "eiffeltower");
        assert_eq!(normalize_answer("an apple, a pear"), "apple pear");
        // "the" inside a word stays.
        assert_eq!(
            normalize_answer("Theatre of the Absurd"),
            "theatre of absurd"
        );
        assert_eq!(normalize_answer("  "), "");
    }

    #[test]
    fn exact_match_takes_any_gold() {
        assert_eq!(exact_match("the granite.", &golds(&["Granite"])), 1.0);
        assert_eq!(exact_match("granite stone", &golds(&["Granite"])), 0.0);
        assert_eq!(exact_match("1931", &golds(&["in 1931", "1931"])), 1.0);
    }

    #[test]
    fn token_f1_by_hand() {
        // pred {a former bicycle shop} → {former, bicycle, shop}; gold {bicycle, shop}
        // P = 2/3, R = 1, F1 = 0.8
        let f = f1("a former bicycle shop", &golds(&["bicycle shop"]));
        assert!((f - 0.8).abs() < 1e-12, "{f}");
        // Repeated tokens count once per occurrence: pred {x x}, gold {x}: P = 1/2, R = 1.
        assert!((f1("x x", &golds(&["x"])) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(f1("nothing", &golds(&["else"])), 0.0);
        // Max over golds.
        assert_eq!(f1("Elm Street", &golds(&["on elm", "Elm Street"])), 1.0);
        // Empty prediction against an answer is 0; only articles normalises to empty.
        assert_eq!(f1("", &golds(&["x"])), 0.0);
        assert_eq!(f1("the", &golds(&["a"])), 1.0);
    }

    #[test]
    fn rouge_l_by_hand() {
        assert_eq!(
            rouge_tokens("It's 3-D, OK?"),
            vec!["it", "s", "3", "d", "ok"]
        );
        // ref: the cat sat on the mat (6); pred: the cat on a mat (5); LCS = the cat on mat = 4
        // P = 4/5, R = 4/6, F = 2PR/(P+R) = 0.727272…
        let f = rouge_l("The cat on a mat", &golds(&["the cat sat on the mat"]));
        assert!((f - 8.0 / 11.0).abs() < 1e-12, "{f}");
        assert_eq!(rouge_l("", &golds(&["x"])), 0.0);
        assert_eq!(rouge_l("a b c", &golds(&["a b c"])), 1.0);
        assert_eq!(rouge_l("c b a", &golds(&["x y"])), 0.0);
        // Non-ASCII letters are separators in rouge-score's tokenizer.
        assert_eq!(rouge_tokens("café"), vec!["caf"]);
    }

    #[test]
    fn judgements_are_parsed_strictly() {
        assert_eq!(parse_judgement("5"), Some(1.0));
        assert_eq!(parse_judgement(" 3.\n"), Some(0.5));
        assert_eq!(parse_judgement("1/5"), Some(0.0));
        for bad in [
            "",
            "6",
            "0",
            "4 stars",
            "Score: 4",
            "4, maybe 5",
            "five",
            "3.5",
        ] {
            assert_eq!(parse_judgement(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn scorer_names() {
        assert_eq!(score("f1", "a", &golds(&["a"])), Some(1.0));
        assert_eq!(score("judge", "a", &golds(&["a"])), None);
    }
}
