//! Prints a GGUF file's metadata and tensor table (a debugging aid).
fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: gguf_dump FILE");
        std::process::exit(2);
    };
    match troupe_gguf::GgufFile::open(&path) {
        Ok(f) => {
            println!(
                "version {} alignment {} data at {}",
                f.version, f.alignment, f.data_offset
            );
            for (k, v) in f.metadata() {
                let s = format!("{v:?}");
                println!("{k} = {}", &s[..s.len().min(120)]);
            }
            for t in f.tensors() {
                println!(
                    "{} {:?} {} @{} +{}",
                    t.name, t.shape, t.ty, t.offset, t.size
                );
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
