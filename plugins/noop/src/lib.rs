//! `noop`: succeeds at once without looking at its payload. It measures the
//! host's own cost per job (see `cargo xtask bench`).

wit_bindgen::generate!({ path: "../../wit", world: "handler" });

struct Noop;

impl Guest for Noop {
    fn handle(_job: Job) -> Result<Option<String>, Failure> {
        Ok(None)
    }
}

export!(Noop);
