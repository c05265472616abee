//! The example kernels' own I/O, not spanalloc's business: COM1 (QEMU needs no UART setup), QEMU's
//! isa-debug-exit (0x10 pass, 0x11 fail) and a panic handler that reports and fails.

// COM1's data register takes a byte at a time.
pub struct Serial;
impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // SAFETY: COM1's data register; writing a byte only sends it.
        s.bytes()
            .for_each(|b| unsafe { x86_64::instructions::port::Port::new(0x3f8).write(b) });
        Ok(())
    }
}
#[macro_export]
macro_rules! print { ($($a:tt)*) => { let _ = core::fmt::Write::write_fmt(&mut $crate::io::Serial, format_args!($($a)*)); } }
#[macro_export]
macro_rules! println { ($($a:tt)*) => { $crate::print!("{}\n", format_args!($($a)*)) } }
pub fn exit(code: u32) -> ! {
    // SAFETY: QEMU's isa-debug-exit device (iobase 0xf4): the write ends the VM.
    unsafe { x86_64::instructions::port::Port::new(0xf4).write(code) };
    loop {
        x86_64::instructions::hlt();
    }
}
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("example: panic: {info}");
    exit(0x11)
}
