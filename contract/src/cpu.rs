//! The one start-up check the relay and the operator share: x86-64 builds target x86-64-v3
//! (`.cargo/config.toml`), and on a CPU without those features the binaries say so and exit
//! instead of dying of SIGILL at the first vectorised loop.

/// Why this build cannot run on this CPU, naming the missing features and the rebuild that
/// fixes it; `None` where it can (and always for a baseline or non-x86 build).
pub fn unsupported(binary: &str) -> Option<String> {
    let missing = missing_features();
    (!missing.is_empty()).then(|| {
        format!(
            "this build of {binary} uses CPU features this CPU lacks ({}; built for x86-64-v3 by \
             .cargo/config.toml); rebuild for baseline x86-64 with \
             CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS=\"-C target-cpu=x86-64\"",
            missing.join(", ")
        )
    })
}

/// The features this build was compiled to use beyond baseline x86-64 that this CPU lacks.
fn missing_features() -> Vec<&'static str> {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    let present = [
        ("avx2", std::arch::is_x86_feature_detected!("avx2")),
        ("fma", std::arch::is_x86_feature_detected!("fma")),
        ("bmi2", std::arch::is_x86_feature_detected!("bmi2")),
    ];
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    let present: [(&str, bool); 0] = [];
    present
        .into_iter()
        .filter(|&(_, ok)| !ok)
        .map(|(name, _)| name)
        .collect()
}
