// Tampering with the database, the way an attacker with write access to the file could: every
// change to a sealed value, a wrapped key or the fields bound into the AAD must give an integrity
// error on detokenize - never a wrong value, never another token's value.
#include <gtest/gtest.h>

#include <functional>

#include "storage/sqlite.h"
#include "tests/support/matchers.h"
#include "tests/support/temp_dir.h"
#include "vault/embedded.h"

namespace tokenvault {
namespace {

using storage::Database;
using testing::TempDir;

class TamperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    OpenVault();
    TV_ASSERT_OK(vault_->CreateMerchant("a"));
    TV_ASSERT_OK(vault_->CreateMerchant("b"));
    for (int i = 0; i < 4; ++i) {
      a_tokens_.push_back(Tokenize("a", "a-value-" + std::to_string(i)));
      b_tokens_.push_back(Tokenize("b", "b-value-" + std::to_string(i)));
    }
    vault_.reset();
  }

  void OpenVault() {
    EmbeddedConfig config;
    config.data_dir = dir_.Sub("data");
    StatusOr<std::unique_ptr<Vault>> v = OpenEmbeddedVault(config);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    vault_ = std::move(v).value();
  }

  std::string Tokenize(const std::string& m, const std::string& value) {
    StatusOr<TokenInfo> t = vault_->Tokenize(m, AsBytes(value), ValueType::kGeneric);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    return t.ok() ? t->token : "";
  }

  // Runs 'change' on the database while no vault has it open, then opens a fresh vault (empty
  // key cache, so wrapped keys go through the HSM again).
  void Tamper(const std::function<void(Database&)>& change) {
    vault_.reset();
    {
      auto db = Database::Open(storage_path(), {});
      ASSERT_TRUE(db.ok()) << db.status().ToString();
      change(**db);
    }
    OpenVault();
  }

  std::string storage_path() const { return EmbeddedDatabasePath(dir_.Sub("data")); }

  static void Exec(Database& db, const std::string& sql) {
    Status s = db.Exec(sql);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  // Flips one bit of byte 'index' of a blob column of the row matching 'where' (?1 = key).
  static void FlipByte(Database& db, const std::string& table, const std::string& column,
                       const std::string& where, const std::string& key, int index) {
    auto read = db.Prepare("SELECT " + column + " FROM " + table + " WHERE " + where);
    ASSERT_TRUE(read.ok()) << read.status().ToString();
    read->Bind(1, std::string_view(key));
    ASSERT_TRUE(*read->Step());
    Bytes blob = read->ColumnBlob(0);
    ASSERT_LT(static_cast<size_t>(index), blob.size());
    blob[index] ^= 0x01;
    auto write = db.Prepare("UPDATE " + table + " SET " + column + " = ?2 WHERE " + where);
    ASSERT_TRUE(write.ok());
    write->Bind(1, std::string_view(key)).Bind(2, ByteView(blob));
    ASSERT_TRUE(write->Run().ok());
    ASSERT_EQ(db.Changes(), 1);
  }

  void ExpectIntegrityError(const std::string& merchant, const std::string& token,
                            const std::string& what) {
    StatusOr<RevealedValue> v = vault_->Detokenize(merchant, token);
    ASSERT_FALSE(v.ok()) << what << ": returned a value";
    EXPECT_EQ(v.status().code(), StatusCode::kDataLoss) << what << ": " << v.status().ToString();
    EXPECT_EQ(v.status().reason(), "integrity_failure") << what;
  }

  void ExpectValue(const std::string& merchant, const std::string& token, const std::string& want) {
    StatusOr<RevealedValue> v = vault_->Detokenize(merchant, token);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    EXPECT_EQ(AsChars(v->value.view()), want);
  }

  TempDir dir_;
  std::unique_ptr<Vault> vault_;
  std::vector<std::string> a_tokens_, b_tokens_;
};

TEST_F(TamperTest, FlippedCiphertextNonceOrTagByte) {
  struct Part {
    const char* column;
    int bytes;
  };
  for (Part part : {Part{"ciphertext", 9}, Part{"nonce", 12}, Part{"tag", 16}}) {
    for (int index : {0, part.bytes / 2, part.bytes - 1}) {
      Tamper([&](Database& db) { FlipByte(db, "tokens", part.column, "token = ?1", a_tokens_[0], index); });
      ExpectIntegrityError("a", a_tokens_[0], std::string(part.column) + "[" + std::to_string(index) + "]");
      // Undo, and check the token reads again: the error was caused by that byte alone.
      Tamper([&](Database& db) { FlipByte(db, "tokens", part.column, "token = ?1", a_tokens_[0], index); });
      ExpectValue("a", a_tokens_[0], "a-value-0");
    }
  }
  ExpectValue("a", a_tokens_[1], "a-value-1");
}

TEST_F(TamperTest, FlippedWrappedDekByte) {
  // Format byte, IV, encrypted key, tag.
  for (int index : {0, 1, 12, 13, 30, 44, 45, 60}) {
    Tamper([&](Database& db) {
      FlipByte(db, "data_keys", "wrapped", "merchant_id = ?1 AND version = 1", "b", index);
    });
    for (const std::string& t : b_tokens_) ExpectIntegrityError("b", t, "wrapped[" + std::to_string(index) + "]");
    ExpectValue("a", a_tokens_[0], "a-value-0");  // another merchant is unaffected
    Tamper([&](Database& db) {
      FlipByte(db, "data_keys", "wrapped", "merchant_id = ?1 AND version = 1", "b", index);
    });
    ExpectValue("b", b_tokens_[0], "b-value-0");
  }
}

TEST_F(TamperTest, SwappedCiphertextsOfTwoTokens) {
  Tamper([&](Database& db) {
    Exec(db,
         "CREATE TEMP TABLE s AS SELECT token, nonce, ciphertext, tag FROM tokens WHERE token IN ('" +
             a_tokens_[0] + "', '" + a_tokens_[1] + "')");
    Exec(db, "UPDATE tokens SET nonce = (SELECT nonce FROM s WHERE s.token != tokens.token), "
             "ciphertext = (SELECT ciphertext FROM s WHERE s.token != tokens.token), "
             "tag = (SELECT tag FROM s WHERE s.token != tokens.token) "
             "WHERE token IN (SELECT token FROM s)");
    ASSERT_EQ(db.Changes(), 2);
  });
  ExpectIntegrityError("a", a_tokens_[0], "swapped 0<->1");
  ExpectIntegrityError("a", a_tokens_[1], "swapped 1<->0");
  ExpectValue("a", a_tokens_[2], "a-value-2");
}

TEST_F(TamperTest, SwappedWrappedDeksOfTwoMerchants) {
  Tamper([&](Database& db) {
    Exec(db, "CREATE TEMP TABLE k AS SELECT merchant_id, wrapped FROM data_keys");
    Exec(db, "UPDATE data_keys SET wrapped = (SELECT wrapped FROM k WHERE k.merchant_id != "
             "data_keys.merchant_id)");
  });
  ExpectIntegrityError("a", a_tokens_[0], "a's key swapped with b's");
  ExpectIntegrityError("b", b_tokens_[0], "b's key swapped with a's");
}

TEST_F(TamperTest, RelabelledRowFields) {
  // Moving a token to another merchant: the AAD names the merchant.
  Tamper([&](Database& db) {
    Exec(db, "UPDATE tokens SET merchant_id = 'b' WHERE token = '" + a_tokens_[0] + "'");
  });
  ExpectIntegrityError("b", a_tokens_[0], "moved to b");
  // Changing its type: the AAD names the type.
  Tamper([&](Database& db) {
    Exec(db, "UPDATE tokens SET type = 'ssn' WHERE token = '" + a_tokens_[1] + "'");
  });
  ExpectIntegrityError("a", a_tokens_[1], "type changed");
  // Pointing it at a DEK version the merchant does not have.
  Tamper([&](Database& db) {
    Exec(db, "UPDATE tokens SET dek_version = 7 WHERE token = '" + a_tokens_[2] + "'");
  });
  ExpectIntegrityError("a", a_tokens_[2], "unknown DEK version");
  // A version outside [0, 2^32) must not be truncated into a valid one.
  Tamper([&](Database& db) {
    Exec(db, "UPDATE tokens SET dek_version = 4294967297 WHERE token = '" + b_tokens_[1] + "'");
  });
  ExpectIntegrityError("b", b_tokens_[1], "DEK version 2^32 + 1");
  // Renaming the token: the AAD names the token.
  const std::string renamed = "tok_0000000000000000000042";
  Tamper([&](Database& db) {
    Exec(db, "UPDATE tokens SET token = '" + renamed + "' WHERE token = '" + a_tokens_[3] + "'");
  });
  ExpectIntegrityError("a", renamed, "token renamed");
}

TEST_F(TamperTest, DekPointedAtAnotherVersionOrKek) {
  // A second DEK version, then make a v1 token claim v2: the AAD names the DEK version.
  TV_ASSERT_OK(vault_ ? Status() : (OpenVault(), Status()));
  TV_ASSERT_OK(vault_->RotateDataKey("a"));
  Tamper([&](Database& db) {
    Exec(db, "UPDATE tokens SET dek_version = 2 WHERE token = '" + a_tokens_[0] + "'");
  });
  ExpectIntegrityError("a", a_tokens_[0], "claims DEK v2");
  // The wrapped DEK claims another KEK version (none exists): integrity failure, not a crash.
  Tamper([&](Database& db) {
    Exec(db, "UPDATE data_keys SET kek_version = 2 WHERE merchant_id = 'b'");
  });
  ExpectIntegrityError("b", b_tokens_[0], "claims KEK v2");
}

}  // namespace
}  // namespace tokenvault
