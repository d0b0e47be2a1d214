@testable import CoQuantModel
import XCTest

/// `encodeBlock` is the inverse of the gguf-py-exact `dequantizeBlocks`: random and extreme codes, every type.
final class GGUFQuantizeTests: XCTestCase {
    func testEncodedBlocksDequantizeToTheGridValues() {
        var rng = SystemRandomNumberGenerator()
        for type in [GGMLType.q4_0, .q4_1, .q5_0, .q8_0] {
            let maxq = (1 << type.codeBits!) - 1
            for trial in 0..<50 {
                // Trial 0: all codes at 0; trial 1: all at maxq; then random, with d of either sign.
                let codes: [UInt8] = (0..<32).map { _ in
                    UInt8(trial == 0 ? 0 : trial == 1 ? maxq : Int.random(in: 0...maxq, using: &rng))
                }
                let d = Float16(Float.random(in: -0.1...0.1, using: &rng)), m = Float16(Float.random(in: -1...1, using: &rng))
                var block = [UInt8](repeating: 0xAA, count: type.typeSize)
                codes.withUnsafeBufferPointer { q in
                    block.withUnsafeMutableBufferPointer { encodeBlock(type, codes: q.baseAddress!, d: d, m: m, into: $0.baseAddress!) }
                }
                var out = [Float](repeating: .nan, count: 32)
                block.withUnsafeBytes { src in
                    out.withUnsafeMutableBufferPointer { dequantizeBlocks(type, src.baseAddress!, $0.baseAddress!, 0..<1) }
                }
                for j in 0..<32 {
                    let expected = type == .q4_1 ? Float(d) * Float(codes[j]) + Float(m)
                                                 : Float(d) * Float(Int(codes[j]) - type.blockZero!)
                    XCTAssertEqual(out[j], expected, "\(type.name) trial \(trial) value \(j)")
                }
            }
        }
    }
}
