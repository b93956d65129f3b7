import Platform
import XCTest

/// SHA-256 vectors from FIPS 180-4's examples (NIST CSRC "SHA256.pdf", "SHA2_Additional.pdf");
/// HMAC-SHA256 vectors from RFC 4231 section 4.
final class CryptoTests: XCTestCase {
  private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

  // MARK: SHA-256

  func testSHA256OfTheEmptyMessage() {
    XCTAssertEqual(SHA256.hex([UInt8]()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    XCTAssertEqual(SHA256.hash([UInt8]()).count, SHA256.digestBytes)
  }

  func testSHA256OfOneBlockMessageABC() {
    XCTAssertEqual(SHA256.hex("abc".utf8), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  }

  func testSHA256OfTheTwoBlock448BitMessage() {
    let message = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
    XCTAssertEqual(message.utf8.count * 8, 448)
    XCTAssertEqual(SHA256.hex(bytes(message)), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
  }

  func testSHA256OfOneMillionAsContiguousAndNot() {
    let expected = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
    XCTAssertEqual(SHA256.hex([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)), expected)
    // Repeated is not contiguous: the copying path gives the same digest.
    XCTAssertEqual(SHA256.hex(repeatElement(UInt8(ascii: "a"), count: 1_000_000)), expected)
  }

  func testSHA256IncrementalEqualsOneShotAtEverySplit() {
    let message = (0..<200).map { UInt8(truncatingIfNeeded: $0 &* 37) }  // over three blocks
    let oneShot = SHA256.hash(message)
    for split in 0...message.count {
      var hashing = SHA256.Incremental()
      hashing.update(message[..<split])
      hashing.update(message[split...])
      let digest = hashing.finalize()  // consumes: not inside XCTAssert's autoclosure
      XCTAssertEqual(digest, oneShot, "split at \(split)")
    }
  }

  func testSHA256IncrementalOverManyPiecesOfOneMillionAs() {
    var hashing = SHA256.Incremental()
    let piece = [UInt8](repeating: UInt8(ascii: "a"), count: 999)  // not a multiple of the block
    for _ in 0..<1_001 { hashing.update(piece) }
    hashing.update(piece[..<1])
    hashing.update([UInt8]())
    let digest = hashing.finalize()
    XCTAssertEqual(Hex.encode(digest), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
  }

  // MARK: HMAC-SHA256 (RFC 4231)

  private func hmacHex(key: [UInt8], message: [UInt8]) -> String {
    Hex.encode(HMACSHA256.authenticationCode(key: key, message: message))
  }

  func testHMACSHA256RFC4231Case1() {
    XCTAssertEqual(
      hmacHex(key: [UInt8](repeating: 0x0B, count: 20), message: bytes("Hi There")),
      "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
  }

  func testHMACSHA256RFC4231Case2KeyShorterThanTheCode() {
    XCTAssertEqual(
      hmacHex(key: bytes("Jefe"), message: bytes("what do ya want for nothing?")),
      "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
  }

  func testHMACSHA256RFC4231Case3() {
    XCTAssertEqual(
      hmacHex(key: [UInt8](repeating: 0xAA, count: 20), message: [UInt8](repeating: 0xDD, count: 50)),
      "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe")
  }

  func testHMACSHA256RFC4231Case4() {
    XCTAssertEqual(
      hmacHex(key: (1...25).map(UInt8.init), message: [UInt8](repeating: 0xCD, count: 50)),
      "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b")
  }

  func testHMACSHA256RFC4231Case6KeyLongerThanTheBlock() {
    XCTAssertEqual(
      hmacHex(key: [UInt8](repeating: 0xAA, count: 131), message: bytes("Test Using Larger Than Block-Size Key - Hash Key First")),
      "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
  }

  func testHMACSHA256RFC4231Case7KeyAndMessageLongerThanTheBlock() {
    let message =
      "This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm."
    XCTAssertEqual(
      hmacHex(key: [UInt8](repeating: 0xAA, count: 131), message: bytes(message)),
      "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2")
  }

  func testHMACSHA256WithAnEmptyKeyOrMessage() {
    // Not in RFC 4231; values from Python's hmac module. An empty key is a valid key, not "no key".
    XCTAssertEqual(hmacHex(key: [], message: []), "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad")
    XCTAssertEqual(hmacHex(key: [], message: bytes("message")), "eb08c1f56d5ddee07f7bdf80468083da06b64cf4fac64fe3a90883df5feacae4")
  }

  func testHMACSHA256IncrementalEqualsOneShotAtEverySplit() {
    let key = [UInt8](repeating: 0xAA, count: 131)
    let message = bytes("POST /v1/raft/batch 1700000000\n") + (0..<300).map { UInt8(truncatingIfNeeded: $0) }
    let oneShot = HMACSHA256.authenticationCode(key: key, message: message)
    XCTAssertEqual(oneShot.count, HMACSHA256.codeBytes)
    for split in 0...message.count {
      var authenticating = HMACSHA256.Incremental(key: key)
      authenticating.update(message[..<split])
      authenticating.update(message[split...])
      let code = authenticating.finalize()
      XCTAssertEqual(code, oneShot, "split at \(split)")
    }
  }

  func testHMACSHA256DependsOnTheKey() {
    let message = bytes("a header line and a body")
    let code = HMACSHA256.authenticationCode(key: bytes("secret one"), message: message)
    XCTAssertNotEqual(HMACSHA256.authenticationCode(key: bytes("secret two"), message: message), code)
    XCTAssertEqual(HMACSHA256.authenticationCode(key: bytes("secret one"), message: message), code)
  }

  // MARK: Comparison and random bytes

  func testConstantTimeEqualsComparesContentAndLength() {
    let code = HMACSHA256.authenticationCode(key: bytes("k"), message: bytes("m"))
    XCTAssertTrue(constantTimeEquals(code, code))
    XCTAssertTrue(constantTimeEquals([], []))
    for index in [0, 15, 31] {
      var altered = code
      altered[index] ^= 0x01
      XCTAssertFalse(constantTimeEquals(code, altered), "differs at \(index)")
    }
    XCTAssertFalse(constantTimeEquals(code, Array(code.dropLast())), "a prefix")
    XCTAssertFalse(constantTimeEquals(code, code + [0]), "longer")
    XCTAssertFalse(constantTimeEquals([], [0]))
  }

  func testSecureRandomBytesHaveTheLengthAskedAndDiffer() throws {
    XCTAssertEqual(try secureRandomBytes(0), [])
    XCTAssertEqual(try secureRandomBytes(1).count, 1)
    XCTAssertEqual(try secureRandomBytes(secureRandomBytesMax).count, secureRandomBytesMax)
    let first = try secureRandomBytes(32)
    let second = try secureRandomBytes(32)
    XCTAssertEqual(first.count, 32)
    XCTAssertNotEqual(first, second, "two 256-bit draws collide with probability 2^-256")
    XCTAssertNotEqual(first, [UInt8](repeating: 0, count: 32))
  }

  func testCryptoErrorSaysWhichCallFailedAndWhy() {
    let error = CryptoError(call: "RAND_bytes", reason: "error:12345:random number generator::unable to fetch drbg")
    XCTAssertEqual(error.description, "RAND_bytes failed: error:12345:random number generator::unable to fetch drbg")
  }
}
