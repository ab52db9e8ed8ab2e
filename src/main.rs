fn main() {
    println!("strata");
}
