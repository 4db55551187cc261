//! The TOTP core on its own, with criterion: a code per algorithm, a verification (the
//! whole window is computed for every answer, right or wrong, so both cost the same),
//! Vault's TOTP engine's tried-code rule on top of it, and one argon2id recovery-code
//! check at OWASP's parameters (the one deliberately slow operation).
//!
//! Run: `cargo bench --bench core` (`-- --quick` for a short run).

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use totpd::otp::{self, recovery, Params, VerifyState, Window};

const SECRET: &[u8] =
    b"12345678901234567890123456789012345678901234567890123456789012345678901234567890";
const NOW: i64 = 1_700_000_000;

fn codes(c: &mut Criterion) {
    for alg in ["SHA1", "SHA256", "SHA512"] {
        let p = Params::new(alg, 6, 30).unwrap();
        c.bench_function(&format!("code {alg}"), |b| {
            b.iter(|| otp::code_at(black_box(&SECRET[..20]), &p, black_box(NOW)))
        });
    }
}

fn verification(c: &mut Criterion) {
    let p = Params::new("SHA1", 6, 30).unwrap();
    let w = Window {
        skew: 1,
        max_attempts: 5,
    };
    let right = otp::code_at(&SECRET[..20], &p, NOW);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    for (name, code) in [("verify right", right.as_str()), ("verify wrong", wrong)] {
        c.bench_function(name, |b| {
            b.iter(|| {
                otp::verify(
                    black_box(&SECRET[..20]),
                    &p,
                    &w,
                    black_box(code),
                    NOW,
                    VerifyState::default(),
                )
            })
        });
    }
    let tried: Vec<String> = (1..=16).map(|i| format!("{:06}", i * 7919)).collect();
    assert!(
        !tried.iter().any(|t| t == wrong),
        "the code checked is not a repeat"
    );
    c.bench_function("verify untried (16 codes remembered)", |b| {
        b.iter(|| {
            otp::verify_untried(
                black_box(&SECRET[..20]),
                &p,
                &w,
                black_box(wrong),
                NOW,
                VerifyState::default(),
                &tried,
            )
        })
    });
}

fn recovery_code(c: &mut Criterion) {
    let set = recovery::generate_set().unwrap();
    let hash = recovery::hash(&set[0]).unwrap();
    let mut g = c.benchmark_group("argon2id");
    g.sample_size(10);
    g.bench_function("recovery code check", |b| {
        b.iter(|| recovery::check(black_box(&set[0]), Some(&hash)))
    });
    g.finish();
}

criterion_group!(benches, codes, verification, recovery_code);
criterion_main!(benches);
