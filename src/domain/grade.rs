//! Climbing grades and speed times, validated at the edge: a boulder grade (Fontainebleau or
//! V-scale), a lead grade (French sport scale) or a speed time in milliseconds.
//!
//! Accepted grades:
//! - boulder, Fontainebleau: `3`, `4`, `4+`, `5`, `5+`, then `6A` to `8C+` (each letter with and
//!   without `+`), and `9A`; letters in either case, written upper case (`7a+` → `7A+`).
//! - boulder, V-scale: `VB`, `V0` to `V17`; `v` in either case, written `V5`.
//! - lead, French sport scale: `4a` to `9c+`, every step with and without `+` (gyms grade
//!   `5c+`); letters in either case, written lower case (`7A+` → `7a+`). Grades below `4a`
//!   (French 1 to 3) are scrambles rather than roped leads and are not accepted.
//! - speed has no grades: it takes a time, see [`validate_time_ms`].
//!
//! [`Grade::difficulty`] is stored with each ascent to find personal records, so the tables below
//! may only grow at their hard end: inserting or reordering grades would change stored ordinals.

use std::fmt;

use super::event::{Discipline, MAX_GRADE_CHARS};

/// Fastest accepted speed time: no climb is faster than a second.
pub const MIN_TIME_MS: u64 = 1_000;
/// Slowest accepted speed time: 10 minutes.
pub const MAX_TIME_MS: u64 = 600_000;

/// Fontainebleau boulder grades, easiest first. A grade's difficulty is its position + 1.
const FONT: [&str; 24] = [
    "3", "4", "4+", "5", "5+", "6A", "6A+", "6B", "6B+", "6C", "6C+", "7A", "7A+", "7B", "7B+",
    "7C", "7C+", "8A", "8A+", "8B", "8B+", "8C", "8C+", "9A",
];

/// V-scale grades, easiest first, with their usual Fontainebleau equivalent. A V grade is
/// exactly as hard as its equivalent.
const V_SCALE: [(&str, &str); 19] = [
    ("VB", "3"),
    ("V0", "4"),
    ("V1", "5"),
    ("V2", "5+"),
    ("V3", "6A"),
    ("V4", "6B"),
    ("V5", "6C"),
    ("V6", "7A"),
    ("V7", "7A+"),
    ("V8", "7B"),
    ("V9", "7C"),
    ("V10", "7C+"),
    ("V11", "8A"),
    ("V12", "8A+"),
    ("V13", "8B"),
    ("V14", "8B+"),
    ("V15", "8C"),
    ("V16", "8C+"),
    ("V17", "9A"),
];

/// French sport grades, easiest first. A grade's difficulty is its position + 1.
const FRENCH: [&str; 36] = [
    "4a", "4a+", "4b", "4b+", "4c", "4c+", "5a", "5a+", "5b", "5b+", "5c", "5c+", "6a", "6a+",
    "6b", "6b+", "6c", "6c+", "7a", "7a+", "7b", "7b+", "7c", "7c+", "8a", "8a+", "8b", "8b+",
    "8c", "8c+", "9a", "9a+", "9b", "9b+", "9c", "9c+",
];

/// The Fontainebleau difficulty of every V grade, resolved at compile time: a V grade whose
/// equivalent is missing from [`FONT`] fails the build rather than a request.
const V_DIFFICULTY: [u16; V_SCALE.len()] = v_difficulties();

const fn v_difficulties() -> [u16; V_SCALE.len()] {
    let mut out = [0; V_SCALE.len()];
    let mut v = 0;
    while v < V_SCALE.len() {
        let mut f = 0;
        while f < FONT.len() && !const_str_eq(FONT[f], V_SCALE[v].1) {
            f += 1;
        }
        assert!(f < FONT.len(), "a V grade's equivalent is not a Font grade");
        out[v] = ordinal(f);
        v += 1;
    }
    out
}

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Difficulty of the grade at `index` in a table. Every table is far shorter than `u16::MAX`.
const fn ordinal(index: usize) -> u16 {
    index as u16 + 1
}

/// The grading system a grade was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GradeScale {
    /// Fontainebleau boulder grades (`7A+`).
    Font,
    /// Hueco V-scale boulder grades (`V5`).
    VScale,
    /// French sport grades for lead (`7a+`).
    French,
}

/// Every character `str::trim` removes (Unicode `White_Space`), as literal characters in a
/// regular-expression class, so the class means the same in JSON Schema (ECMA-262), Python and
/// Rust.
const TRIMMED: &str = "\t\n\u{b}\u{c}\r \u{85}\u{a0}\u{1680}\u{2000}-\u{200a}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}";

/// A regular expression that matches exactly the text [`Grade::parse`] accepts for `discipline`
/// (none for speed), for the OpenAPI document: every grade of the discipline's scales, letters
/// in either case, surrounding whitespace allowed.
pub fn pattern(discipline: Discipline) -> Option<String> {
    let grades: Vec<&str> = match discipline {
        Discipline::Boulder => FONT
            .iter()
            .chain(V_SCALE.iter().map(|(v, _)| v))
            .copied()
            .collect(),
        Discipline::Lead => FRENCH.to_vec(),
        Discipline::Speed => return None,
    };
    let alternatives: Vec<String> = grades
        .iter()
        .map(|grade| {
            grade
                .chars()
                .map(|c| match c {
                    '+' => "\\+".to_owned(),
                    c if c.is_ascii_alphabetic() => {
                        format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
                    }
                    c => c.to_string(),
                })
                .collect()
        })
        .collect();
    Some(format!(
        "^[{TRIMMED}]*(?:{})[{TRIMMED}]*$",
        alternatives.join("|")
    ))
}

/// A validated grade. `Display` prints its normalized text (`7A+`, `V5`, `7a+`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grade {
    scale: GradeScale,
    /// The normalized text, from the scale's table.
    text: &'static str,
    difficulty: u16,
}

impl Grade {
    /// Parses a grade for `discipline`: Fontainebleau or V-scale for boulder, French for lead
    /// (see the module docs for the exact lists). Surrounding whitespace is ignored and letters
    /// may be in either case.
    pub fn parse(discipline: Discipline, raw: &str) -> Result<Grade, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("grade must not be empty".to_owned());
        }
        if raw.chars().count() > MAX_GRADE_CHARS {
            return Err(format!("grade is longer than {MAX_GRADE_CHARS} characters"));
        }
        let found = match discipline {
            Discipline::Boulder => find(GradeScale::Font, &FONT, raw, ordinal).or_else(|| {
                let names = V_SCALE.map(|(v, _)| v);
                find(GradeScale::VScale, &names, raw, |i| V_DIFFICULTY[i])
            }),
            Discipline::Lead => find(GradeScale::French, &FRENCH, raw, ordinal),
            Discipline::Speed => {
                return Err("speed ascents take time_ms, not a grade".to_owned());
            }
        };
        found.ok_or_else(|| match discipline {
            Discipline::Lead => format!(
                "unknown lead grade {raw:?}: use a French sport grade from 4a to 9c+, such as 6b or 7a+"
            ),
            _ => format!(
                "unknown boulder grade {raw:?}: use a Fontainebleau grade from 3 to 9A, such as 7A+, \
                 or a V grade from VB to V17, such as V5"
            ),
        })
    }

    /// An ordinal of how hard the grade is, comparable within one discipline: Fontainebleau
    /// and V grades share one ordinal (V5 is as hard as 6C); French grades have their own.
    pub fn difficulty(&self) -> u16 {
        self.difficulty
    }

    pub fn scale(&self) -> GradeScale {
        self.scale
    }

    /// The normalized text: `7A+`, `V5`, `7a+`.
    pub fn as_str(&self) -> &'static str {
        self.text
    }
}

/// The grade of `table` that `raw` names, ignoring ASCII case; `difficulty` maps its position.
fn find(
    scale: GradeScale,
    table: &[&'static str],
    raw: &str,
    difficulty: impl Fn(usize) -> u16,
) -> Option<Grade> {
    let index = table
        .iter()
        .position(|text| text.eq_ignore_ascii_case(raw))?;
    Some(Grade {
        scale,
        text: table[index],
        difficulty: difficulty(index),
    })
}

impl fmt::Display for Grade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Accepts a speed time from [`MIN_TIME_MS`] to [`MAX_TIME_MS`].
pub fn validate_time_ms(ms: u64) -> Result<u64, String> {
    if (MIN_TIME_MS..=MAX_TIME_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!(
            "time_ms must be from {MIN_TIME_MS} to {MAX_TIME_MS} (1 second to 10 minutes), got {ms}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The document's pattern for a discipline matches exactly what `Grade::parse` accepts.
        #[test]
        fn the_pattern_matches_exactly_the_accepted_grades(
            raw in "[3-9vVbB01a-dA-D+ \t\u{a0}\u{2003}x]{0,6}",
        ) {
            for discipline in [Discipline::Boulder, Discipline::Lead] {
                let pattern = regex::Regex::new(&pattern(discipline).unwrap()).unwrap();
                prop_assert_eq!(
                    pattern.is_match(&raw),
                    Grade::parse(discipline, &raw).is_ok(),
                    "{:?} {:?}", discipline, raw
                );
            }
        }
    }

    #[test]
    fn every_grade_of_a_table_matches_its_pattern_in_either_case() {
        let boulder = regex::Regex::new(&pattern(Discipline::Boulder).unwrap()).unwrap();
        let lead = regex::Regex::new(&pattern(Discipline::Lead).unwrap()).unwrap();
        for grade in FONT.iter().chain(V_SCALE.iter().map(|(v, _)| v)) {
            assert!(boulder.is_match(grade) && boulder.is_match(&grade.to_lowercase()));
        }
        for grade in FRENCH {
            assert!(lead.is_match(grade) && lead.is_match(&format!(" {} ", grade.to_uppercase())));
        }
        assert!(pattern(Discipline::Speed).is_none());
    }

    fn boulder(raw: &str) -> Grade {
        Grade::parse(Discipline::Boulder, raw).unwrap()
    }

    fn lead(raw: &str) -> Grade {
        Grade::parse(Discipline::Lead, raw).unwrap()
    }

    #[test]
    fn font_grades_are_written_upper_case_whatever_the_input() {
        assert_eq!(boulder("7a+").to_string(), "7A+");
        assert_eq!(boulder(" 6c ").to_string(), "6C");
        assert_eq!(boulder("8B+").as_str(), "8B+");
        assert_eq!(boulder("4+").to_string(), "4+");
        assert_eq!(boulder("7a+").scale(), GradeScale::Font);
    }

    #[test]
    fn v_grades_are_written_with_an_upper_case_v() {
        assert_eq!(boulder("v5").to_string(), "V5");
        assert_eq!(boulder("vb").to_string(), "VB");
        assert_eq!(boulder("V17").to_string(), "V17");
        assert_eq!(boulder("v5").scale(), GradeScale::VScale);
    }

    #[test]
    fn french_grades_are_written_lower_case_whatever_the_input() {
        assert_eq!(lead("7A+").to_string(), "7a+");
        assert_eq!(lead("\t6b\n").to_string(), "6b");
        assert_eq!(lead("5c+").to_string(), "5c+");
        assert_eq!(lead("9C+").scale(), GradeScale::French);
    }

    #[test]
    fn every_grade_parses_back_from_its_own_text() {
        for (discipline, table) in [
            (Discipline::Boulder, FONT.to_vec()),
            (
                Discipline::Boulder,
                V_SCALE.iter().map(|(v, _)| *v).collect(),
            ),
            (Discipline::Lead, FRENCH.to_vec()),
        ] {
            for text in table {
                let grade = Grade::parse(discipline, text).unwrap();
                assert_eq!(grade.as_str(), text);
                assert_eq!(Grade::parse(discipline, &grade.to_string()).unwrap(), grade);
                assert!(text.len() <= MAX_GRADE_CHARS);
            }
        }
    }

    #[test]
    fn each_table_is_strictly_harder_from_one_grade_to_the_next() {
        for (discipline, table) in [
            (Discipline::Boulder, &FONT[..]),
            (Discipline::Lead, &FRENCH[..]),
        ] {
            let difficulties: Vec<u16> = table
                .iter()
                .map(|t| Grade::parse(discipline, t).unwrap().difficulty())
                .collect();
            assert!(difficulties.windows(2).all(|w| w[0] < w[1]), "{table:?}");
        }
        let v: Vec<u16> = V_SCALE
            .iter()
            .map(|(t, _)| boulder(t).difficulty())
            .collect();
        assert!(v.windows(2).all(|w| w[0] < w[1]), "{v:?}");
    }

    #[test]
    fn v_grades_are_as_hard_as_their_font_equivalents() {
        for (v, font) in V_SCALE {
            assert_eq!(boulder(v).difficulty(), boulder(font).difficulty(), "{v}");
        }
        assert_eq!(boulder("V5").difficulty(), boulder("6C").difficulty());
        assert_eq!(boulder("VB").difficulty(), boulder("3").difficulty());
        assert_eq!(boulder("V17").difficulty(), boulder("9A").difficulty());
    }

    #[test]
    fn font_and_v_grades_order_across_scales() {
        assert!(boulder("7A+").difficulty() > boulder("V5").difficulty());
        assert!(boulder("V8").difficulty() > boulder("7A+").difficulty());
        assert!(boulder("6C+").difficulty() > boulder("V5").difficulty());
        assert!(boulder("6C+").difficulty() < boulder("V6").difficulty());
        assert!(boulder("V0").difficulty() > boulder("3").difficulty());
        assert!(boulder("V2").difficulty() > boulder("5").difficulty());
    }

    #[test]
    fn the_same_grade_in_two_scales_is_not_the_same_grade() {
        assert_ne!(boulder("V5"), boulder("6C"));
        assert_eq!(boulder("6c"), boulder("6C"));
    }

    #[test]
    fn boulder_rejects_what_is_neither_font_nor_v_scale() {
        for bad in [
            "2", "3+", "9A+", "10", "V18", "V-1", "V5+", "VB+", "6D", "7 A", "V", "A",
        ] {
            let err = Grade::parse(Discipline::Boulder, bad).unwrap_err();
            assert!(err.contains("Fontainebleau"), "{bad}: {err}");
            assert!(err.contains("V grade"), "{bad}: {err}");
        }
    }

    #[test]
    fn lead_rejects_what_is_not_a_french_sport_grade() {
        for bad in ["3", "3c", "4", "6", "V5", "10a", "9d", "6a++", "6A+ ++"] {
            let err = Grade::parse(Discipline::Lead, bad).unwrap_err();
            assert!(
                err.contains("French sport grade from 4a to 9c+"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn speed_takes_a_time_not_a_grade() {
        assert_eq!(
            Grade::parse(Discipline::Speed, "7a").unwrap_err(),
            "speed ascents take time_ms, not a grade"
        );
    }

    #[test]
    fn empty_and_overlong_grades_are_rejected_before_lookup() {
        assert_eq!(
            Grade::parse(Discipline::Boulder, "   ").unwrap_err(),
            "grade must not be empty"
        );
        let long = "7".repeat(MAX_GRADE_CHARS + 1);
        assert_eq!(
            Grade::parse(Discipline::Lead, &long).unwrap_err(),
            format!("grade is longer than {MAX_GRADE_CHARS} characters")
        );
        // Whitespace around a grade does not count towards the cap.
        let padded = format!("{}7a{}", " ".repeat(20), " ".repeat(20));
        assert_eq!(lead(&padded).to_string(), "7a");
    }

    #[test]
    fn speed_times_from_one_second_to_ten_minutes_are_accepted() {
        assert_eq!(validate_time_ms(MIN_TIME_MS), Ok(1_000));
        assert_eq!(validate_time_ms(6_500), Ok(6_500));
        assert_eq!(validate_time_ms(MAX_TIME_MS), Ok(600_000));
    }

    #[test]
    fn speed_times_outside_the_bounds_are_rejected() {
        for bad in [0, MIN_TIME_MS - 1, MAX_TIME_MS + 1, u64::MAX] {
            let err = validate_time_ms(bad).unwrap_err();
            assert!(err.contains("1000 to 600000"), "{bad}: {err}");
        }
    }
}
