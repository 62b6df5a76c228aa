// The built-in templates are embedded in the binary: rebuild when they change.
fn main() {
    println!("cargo:rerun-if-changed=templates");
}
