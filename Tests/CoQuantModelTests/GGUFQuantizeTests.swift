@testable import CoQuantModel
import XCTest

/// `encodeBlock` is the inverse of the gguf-py-exact `dequantizeBlocks`: random and extreme codes, every type.
final class GGUFQuantizeTests: XCTestCase {
    func testEncodedBlocksDequantizeToTheGridValues() {
        var rng = SystemRandomNumberGenerator()
        for type in [GGMLType.q4_0, .q4_1, .q5_0, .q5_1, .q8_0] {
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
                    let expected = type == .q4_1 || type == .q5_1 ? Float(d) * Float(codes[j]) + Float(m)
                                                 : Float(d) * Float(Int(codes[j]) - type.blockZero!)
                    XCTAssertEqual(out[j], expected, "\(type.name) trial \(trial) value \(j)")
                }
            }
        }
    }

    /// The integer ranges `encodeKBlock` accepts: codes, scales, mins (nil: the type has none).
    private static let kRanges: [(GGMLType, ClosedRange<Int>, ClosedRange<Int>, ClosedRange<Int>?)] = [
        (.q2_K, 0...3, 0...15, 0...15), (.q3_K, 0...7, -32...31, nil), (.q4_K, 0...15, 0...63, 0...63),
        (.q5_K, 0...31, 0...63, 0...63), (.q6_K, 0...63, -128...127, nil),
    ]

    /// Trial 0: every code, scale and min at its lowest; trial 1: all at the highest; trial 2: alternating extremes;
    /// then random (each entry an extreme one time in four), with d and dmin of either sign.
    private static func kTrial(_ trial: Int, _ codes: ClosedRange<Int>, _ scales: ClosedRange<Int>,
                               _ mins: ClosedRange<Int>?, groups: Int,
                               using rng: inout SystemRandomNumberGenerator) -> ([UInt8], KBlockParameters) {
        func pick(_ r: ClosedRange<Int>, _ i: Int) -> Int {
            switch trial {
            case 0: return r.lowerBound
            case 1: return r.upperBound
            case 2: return i % 2 == 0 ? r.lowerBound : r.upperBound
            default:
                switch Int.random(in: 0..<8, using: &rng) {
                case 0: return r.lowerBound
                case 1: return r.upperBound
                default: return Int.random(in: r, using: &rng)
                }
            }
        }
        let q = (0..<256).map { UInt8(pick(codes, $0)) }
        let p = KBlockParameters(d: Float16(Float.random(in: -0.01...0.01, using: &rng)),
                                 dmin: Float16(Float.random(in: -0.01...0.01, using: &rng)),
                                 scales: (0..<groups).map { pick(scales, $0) },
                                 mins: mins.map { r in (0..<groups).map { pick(r, $0 + 1) } } ?? [])
        return (q, p)
    }

    /// `encodeKBlock` is the inverse of the gguf-py-exact `dequantizeBlocks` for the five K-quant super-blocks: the
    /// decoded values are bit-identical to the formula evaluated in float32 in the decoder's order.
    func testEncodedKBlocksDequantizeToTheGridValues() {
        var rng = SystemRandomNumberGenerator()
        for (type, codeRange, scaleRange, minRange) in Self.kRanges {
            XCTAssertEqual(type.codeBits.map { (1 << $0) - 1 }, codeRange.upperBound, type.name)
            let sub = type.subBlockSize!, groups = 256 / sub
            for trial in 0..<40 {
                let (codes, p) = Self.kTrial(trial, codeRange, scaleRange, minRange, groups: groups, using: &rng)
                var block = [UInt8](repeating: 0xAA, count: type.typeSize)
                codes.withUnsafeBufferPointer { q in
                    block.withUnsafeMutableBufferPointer { encodeKBlock(type, codes: q.baseAddress!, p, into: $0.baseAddress!) }
                }
                var out = [Float](repeating: .nan, count: 256)
                block.withUnsafeBytes { src in
                    out.withUnsafeMutableBufferPointer { dequantizeBlocks(type, src.baseAddress!, $0.baseAddress!, 0..<1) }
                }
                let d = Float(p.d), dmin = Float(p.dmin)
                for e in 0..<256 {
                    let j = e / sub, q = Int(codes[e])
                    let expected: Float
                    switch type {
                    case .q3_K:
                        let dl = d * Float(p.scales[j])
                        expected = dl * Float(q - 4)
                    case .q6_K:
                        expected = d * Float(p.scales[j]) * Float(q - 32)
                    default:
                        let ds = d * Float(p.scales[j]), dm = dmin * Float(p.mins[j])
                        let prod = ds * Float(q)
                        expected = prod - dm
                    }
                    XCTAssertEqual(out[e].bitPattern, expected.bitPattern,
                                   "\(type.name) trial \(trial) value \(e): \(out[e]) vs \(expected)")
                }
            }
        }
    }

    /// A K block writes exactly `typeSize` bytes: the result does not depend on what the block's bytes held before,
    /// and guard bytes on either side are untouched.
    func testEncodedKBlockWritesExactlyTypeSizeBytes() {
        var rng = SystemRandomNumberGenerator()
        let guardCount = 16
        for (type, codeRange, scaleRange, minRange) in Self.kRanges {
            let (codes, p) = Self.kTrial(3, codeRange, scaleRange, minRange, groups: 256 / type.subBlockSize!, using: &rng)
            var blocks: [[UInt8]] = []
            for fill: UInt8 in [0x00, 0xFF, 0x5A] {
                var buffer = [UInt8](repeating: 0xC3, count: guardCount)
                    + [UInt8](repeating: fill, count: type.typeSize) + [UInt8](repeating: 0x3C, count: guardCount)
                codes.withUnsafeBufferPointer { q in
                    buffer.withUnsafeMutableBufferPointer {
                        encodeKBlock(type, codes: q.baseAddress!, p, into: $0.baseAddress! + guardCount)
                    }
                }
                XCTAssertEqual(Array(buffer.prefix(guardCount)), [UInt8](repeating: 0xC3, count: guardCount), type.name)
                XCTAssertEqual(Array(buffer.suffix(guardCount)), [UInt8](repeating: 0x3C, count: guardCount), type.name)
                blocks.append(Array(buffer[guardCount..<guardCount + type.typeSize]))
            }
            XCTAssertEqual(blocks[0], blocks[1], "\(type.name): a byte of the block kept its previous contents")
            XCTAssertEqual(blocks[0], blocks[2], "\(type.name): a byte of the block kept its previous contents")
        }
    }

    func testSubBlockSizes() {
        for type in [GGMLType.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K] { XCTAssertEqual(type.subBlockSize, 32, type.name) }
        for type in [GGMLType.q2_K, .q3_K, .q6_K] { XCTAssertEqual(type.subBlockSize, 16, type.name) }
        for type in [GGMLType.f32, .f16, .q8_K, .iq4_xs] {
            XCTAssertNil(type.subBlockSize, type.name)
            XCTAssertNil(type.codeBits, type.name)
        }
    }
}
