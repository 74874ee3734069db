import Crypto
import Foundation
import QSBytes
import QSModel
@testable import QSRest
import QSStore
import QSWire
import XCTest

func sha256Hex(_ s: String) -> String {
    SHA256.hash(data: Array(s.utf8)).map { String(format: "%02x", $0) }.joined()
}

/// The ACL file, conditional writes as the root decides them, quotas: no sockets.
final class ACLAndWriteTests: XCTestCase {
    func testTheDocumentedACLLoadsAndAuthenticatesByHashedToken() throws {
        let text = """
            # producers of the config fleet
            [producers.dns]
            token_sha256 = "\(sha256Hex("dns-secret"))"            # hex SHA-256 of the producer's token
            prefixes = ["dns/"]           # QS keys it may write (after --db-map), one or more
            writes_per_second = 5_000      # optional soft quota
            bytes_per_second = 10000000   # optional soft quota
            shared = false                # optional

            [producers.waf]
            token_sha256 = "\(sha256Hex("waf-secret"))"
            prefixes = ["waf/", "rules/"]
            """
        let acl = try ACL(parsing: text)
        XCTAssertEqual(acl.producers.map(\.name), ["dns", "waf"])
        XCTAssertEqual(acl.producers[0].writesPerSecond, 5000)
        XCTAssertEqual(acl.producers[0].bytesPerSecond, 10_000_000)
        XCTAssertEqual(acl.authenticate(user: nil, token: Array("dns-secret".utf8))?.name, "dns")
        XCTAssertEqual(acl.authenticate(user: "waf", token: Array("waf-secret".utf8))?.name, "waf")
        XCTAssertNil(acl.authenticate(user: "dns", token: Array("waf-secret".utf8)), "a token is only good under its own name")
        XCTAssertNil(acl.authenticate(user: nil, token: Array("nope".utf8)))
        XCTAssertTrue(acl.producers[1].may(write: Array("rules/x".utf8)))
        XCTAssertFalse(acl.producers[1].may(write: Array("dns/x".utf8)))
        // Saved with Windows line endings, whole or in part: the same ACL, line for line.
        for crlf in [text.replacingOccurrences(of: "\n", with: "\r\n"),
                     text.replacingOccurrences(of: "# optional soft quota\n", with: "# optional soft quota\r\n")] {
            let again = try ACL(parsing: crlf)
            XCTAssertEqual(again.producers.map(\.name), ["dns", "waf"])
            XCTAssertEqual(again.producers[0].writesPerSecond, 5000)
            XCTAssertEqual(again.producers[0].bytesPerSecond, 10_000_000)
        }
    }

    func testErrorsNameTheLine() {
        func error(_ text: String) -> String {
            do {
                _ = try ACL(parsing: text, origin: "acl.toml")
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        XCTAssertTrue(error("[producers.x]\r\nprefixes = 3\r\n").hasPrefix("acl.toml: line 2:"), "a CRLF file's line numbers: \(error("[producers.x]\r\nprefixes = 3\r\n"))")
        let h = sha256Hex("t")
        XCTAssertEqual(error("[producers.a]\ntoken_sha256 = \"abc\"\nprefixes = [\"a/\"]\n"),
                       "acl.toml: line 2: token_sha256 must be 64 hex digits (the SHA-256 of the token: printf %s TOKEN | sha256sum)")
        // The hash of an empty token (an unset variable hashed) would let anyone in.
        XCTAssertEqual(error("[producers.a]\ntoken_sha256 = \"\(sha256Hex(""))\"\nprefixes = [\"a/\"]\n"),
                       "acl.toml: line 2: token_sha256 is the SHA-256 of an empty token (was the token's variable unset when it was hashed?): give the producer a token of its own")
        XCTAssertEqual(error("[producers.a]\ntoken_sha256 = \"\(h)\"\nprefixes = [\"a/\"]\nquota = 3\n"),
                       "acl.toml: line 4: unknown key 'quota' (known: token_sha256, prefixes, writes_per_second, bytes_per_second, shared)")
        XCTAssertEqual(error("\n[producers.a]\ntoken_sha256 = \"\(h)\"\nprefixes = [\"a/\"\n"),
                       "acl.toml: line 4: unterminated array (write the whole array on one line)")
        XCTAssertEqual(error("[producers.a]\nprefixes = [\"a/\"]\n"), "acl.toml: line 1: producer 'a' has no token_sha256")
        XCTAssertEqual(error("[producers.a]\ntoken_sha256 = \"\(h)\"\nprefixes = [\"a/\"]\nwrites_per_second = 1.5\n"),
                       "acl.toml: line 4: only whole numbers are used in this file")
        XCTAssertEqual(error("[users.a]\n"), "acl.toml: line 1: unknown table [users.a]: only [producers.NAME] tables are read")
        // The whole keyspace only on purpose, whichever order the keys come in.
        XCTAssertEqual(error("[producers.a]\ntoken_sha256 = \"\(h)\"\nprefixes = [\"\"]\n"),
                       "acl.toml: line 3: the empty prefix gives producer 'a' the whole keyspace; add shared = true to it if that is meant")
        XCTAssertEqual(error("[producers.a]\nshared = true\ntoken_sha256 = \"\(h)\"\nprefixes = [\"\"]\n"), "no error")
        XCTAssertEqual(error("[producers.a]\ntoken_sha256 = \"\(h)\"\nprefixes = [\"\"]\nshared = true\n"), "no error")
    }

    func testOverlappingPrefixesAreRefusedUnlessBothAreShared() throws {
        func acl(_ sharedA: Bool, _ sharedB: Bool) throws -> ACL {
            try ACL(parsing: """
                [producers.a]
                token_sha256 = "\(sha256Hex("a"))"
                prefixes = ["cfg/"]
                shared = \(sharedA)
                [producers.b]
                token_sha256 = "\(sha256Hex("b"))"
                prefixes = ["cfg/dns/"]
                shared = \(sharedB)
                """)
        }
        XCTAssertThrowsError(try acl(false, false)) { error in
            XCTAssertTrue("\(error)".contains("producers 'a' and 'b' overlap: 'cfg/' and 'cfg/dns/'"), "\(error)")
        }
        XCTAssertThrowsError(try acl(true, false))
        let shared = try acl(true, true)
        XCTAssertEqual(shared.owners(of: Array("cfg/dns/x".utf8)).map(\.name), ["a", "b"])
    }

    func testConditionalWritesDecideAsKT() {
        let k = Array("k".utf8)
        let v = Record(value: Array("v".utf8), expiry: nil)
        func eval(_ kind: ConditionalWrite.Kind, _ current: Record?, _ value: String = "n") -> (Mutation?, ConditionalWrite.Outcome) {
            ConditionalWrite(kind, key: k, value: Array(value.utf8)).evaluate(current: current)
        }
        XCTAssertEqual(eval(.add, v).1, .exists)
        XCTAssertNil(eval(.add, v).0)
        XCTAssertEqual(eval(.add, nil).1, .done)
        XCTAssertEqual(eval(.replace, nil).1, .missing)
        XCTAssertEqual(eval(.append, v, "w").0, .set(key: k, value: Array("vw".utf8), expiry: nil))
        XCTAssertEqual(eval(.cas(old: Array("v".utf8), remove: false), v).1, .done)
        XCTAssertEqual(eval(.cas(old: Array("x".utf8), remove: false), v).1, .mismatch)
        XCTAssertEqual(eval(.cas(old: nil, remove: false), v).1, .mismatch)
        XCTAssertEqual(eval(.cas(old: Array("v".utf8), remove: true), v).0, .delete(key: k))
        XCTAssertEqual(eval(.increment(by: 5, origin: 0), nil).1, .number(5))
        XCTAssertEqual(eval(.increment(by: 5, origin: Int64.min), nil).1, .missing)
        XCTAssertEqual(eval(.increment(by: 5, origin: 0), v).1, .notANumber)
        let seven = Record(value: [0, 0, 0, 0, 0, 0, 0, 7], expiry: nil)
        XCTAssertEqual(eval(.increment(by: -2, origin: 0), seven).0, .set(key: k, value: [0, 0, 0, 0, 0, 0, 0, 5], expiry: nil))
        XCTAssertEqual(eval(.remove, nil).1, .missing)
    }

    func testWritesAndTheirOutcomesRoundTripOnTheWire() throws {
        let writes = [ConditionalWrite(.cas(old: nil, remove: true), key: [1]), ConditionalWrite(.increment(by: -3, origin: Int64.min), key: [2], expiry: 99),
                      ConditionalWrite(.append, key: [3], value: [4, 5])]
        let request = Request.writes(.init(token: [9], sourceID: "qsrest:a", expected: 4, new: 7, writes: writes))
        XCTAssertEqual(try Request.decode(request.frame()), request)
        let response = Response.written(logIndex: 12, outcomes: [.done, .number(-3), .mismatch, .notANumber])
        XCTAssertEqual(try Response.decode(response.frame()), response)
    }

    /// The root decides each write inside the batch's transaction, seeing the batch's own
    /// earlier writes; a conflicting position changes nothing.
    func testTheStoreDecidesWritesInsideTheBatchTransaction() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("qsrest-store-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = try Store(directory: dir.path)
        let k = Array("dns/a".utf8)
        let outcome = try await store.applyWrites(sourceID: "qsrest:t", expected: 0, new: 10, writes: [
            ConditionalWrite(.add, key: k, value: [1]),
            ConditionalWrite(.add, key: k, value: [2]),
            ConditionalWrite(.increment(by: 1, origin: 0), key: Array("dns/n".utf8)),
            ConditionalWrite(.increment(by: 1, origin: 0), key: Array("dns/n".utf8)),
        ])
        XCTAssertEqual(outcome, .written(logIndex: 1, outcomes: [.done, .exists, .number(1), .number(2)]))
        let first = try await store.get(k)
        XCTAssertEqual(first?.value, [1])
        let conflict = try await store.applyWrites(sourceID: "qsrest:t", expected: 0, new: 11, writes: [ConditionalWrite(.set, key: k, value: [3])])
        XCTAssertEqual(conflict, .conflict(current: 10))
        let after = try await store.get(k)
        XCTAssertEqual(after?.value, [1])
        let checkpoint = try await store.checkpoint(sourceID: "qsrest:t")
        XCTAssertEqual(checkpoint, 10)
    }

    func testQuotaDelaysPastTheSoftLimitThenRefuses() {
        let t0 = ContinuousClock.now
        var q = Quota(writesPerSecond: 10, bytesPerSecond: nil, maxDelay: .seconds(1), now: t0)
        XCTAssertEqual(q.take(writes: 10, bytes: 0, now: t0), .pass)
        guard case let .delay(d) = q.take(writes: 5, bytes: 0, now: t0) else { return XCTFail("expected a delay") }
        XCTAssertEqual(Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18, 0.5, accuracy: 0.01)
        XCTAssertEqual(q.take(writes: 10, bytes: 0, now: t0), .refuse(retryAfter: 1))
        XCTAssertEqual(q.take(writes: 1, bytes: 0, now: t0 + .seconds(2)), .pass)
        // More than a full bucket and the longest delay cover: refused for good, not "retry
        // after" a time after which it would be refused again.
        guard case let .neverFits(why) = q.take(writes: 21, bytes: 0, now: t0 + .seconds(10)) else { return XCTFail("expected neverFits") }
        XCTAssertTrue(why.contains("needs 21 writes") && why.contains("at most 20"), why)
        XCTAssertEqual(q.take(writes: 20, bytes: 0, now: t0 + .seconds(10)), .delay(.seconds(1)))
    }

    /// A compare-and-swap's old value is held and sent like its new one: counted in the
    /// bytes every cap and quota sees.
    func testACompareAndSwapsOldValueCountsInItsBytes() {
        let old = [UInt8](repeating: 7, count: 1 << 20)
        XCTAssertEqual(ConditionalWrite(.cas(old: old, remove: false), key: [1, 2], value: [3]).payloadBytes, 3 + (1 << 20))
        XCTAssertEqual(ConditionalWrite(.cas(old: old, remove: true), key: [1, 2], value: []).payloadBytes, 2 + (1 << 20))
        XCTAssertEqual(ConditionalWrite(.cas(old: nil, remove: false), key: [1, 2], value: [3]).payloadBytes, 3)
        var q = Quota(writesPerSecond: nil, bytesPerSecond: 1000, maxDelay: .seconds(1), now: .now)
        let cas = ConditionalWrite(.cas(old: old, remove: false), key: [1], value: [1])
        guard case .neverFits = q.take(writes: 1, bytes: cas.payloadBytes, now: .now) else { return XCTFail("a 1 MB old value passed a 1000 B/s quota") }
    }
}
