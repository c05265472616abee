fn main() {
    println!("{}", env!("BIOS_IMAGE"));
}
