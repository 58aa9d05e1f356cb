//! Downloads the AV-MNIST kit files missing under a folder, explicitly:
//! `cargo run --release -p mckd-data --example fetch_kit -- DEST` (DEST is the folder that will
//! contain `avmnist/`). Prints what it fetches and the progress on stderr; offline it stops
//! after the first failed connection with one message.

use std::path::PathBuf;

fn main() {
    let Some(dest) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fetch_kit DEST   (DEST will contain avmnist/)");
        std::process::exit(2);
    };
    let sources = mckd_data::Sources::default();
    match mckd_data::download_avmnist(&dest, &sources, &mut |m| eprintln!("fetch_kit: {m}")) {
        Ok(()) => println!("{}", dest.display()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
