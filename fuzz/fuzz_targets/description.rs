//! Any bytes, as a description in each of the three forms: parse never
//! panics, and whatever parses writes back to something that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vws_model::Form;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for form in [Form::Xml, Form::Toml, Form::Json] {
        if let Ok(d) = vws_model::parse(text, form) {
            let again = vws_model::parse(&vws_model::write(&d, form), form).expect("written forms parse");
            assert_eq!(again, d);
        }
    }
});
