//! Pulls a catalog model: `cargo run -p troupe-hub --example pull -- NAME [DATA_DIR]`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map_or("smollm2-135m", String::as_str);
    let explicit = args.get(1).map(std::path::PathBuf::from);
    let opts = troupe_hub::PullOptions {
        progress: true,
        verify: std::env::var_os("VERIFY").is_some(),
        python: None,
    };
    let result = troupe_hub::data_dir(explicit.as_deref())
        .and_then(|data| troupe_hub::pull(name, &data, &opts));
    match result {
        Ok(p) => println!("{} (downloaded: {})", p.path.display(), p.downloaded),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
