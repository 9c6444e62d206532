//! The Lua scripts that read and change a dataset's write position, atomically (on a cluster
//! too: their keys share the dataset's hash tag).

use redis::Script;

use crate::cache::fresh::WRITE_RECORD_MAX_BYTES;

/// The start of every script that reads or changes a dataset's position (`KEYS`: the stamp
/// hash, the write log, the writes in flight). The position belongs to one run of the Redis
/// server (its `run_id`): when the stamp is missing (a new prefix, an eviction, a restart
/// without persistence) or was written by an earlier run (a restart that loaded a snapshot, whose
/// log may lack writes made after it), a new epoch starts at the server's clock in
/// microseconds (above the old one), whose log begins with a change of everything.
pub const PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local h = redis.call('HMGET', KEYS[1], 'epoch', 'run')
local epoch = h[1]
if (not epoch) or h[2] ~= run then
  local fresh = t[1] .. string.format('%06d', tonumber(t[2]))
  if epoch and tonumber(epoch) and tonumber(epoch) >= tonumber(fresh) then
    fresh = string.format('%.0f', tonumber(epoch) + 1)
  end
  epoch = fresh
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 1, 'run', run)
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('RPUSH', KEYS[2], '1 *')
end
";

/// `"<epoch> <seq> <settled>"` (one string: the reply of every cached read not yet proven
/// fresh, and one bulk string parses in a fraction of an array's time): writes in flight past
/// their lifetime are forgotten; `settled` is the position before the earliest one left (0 while
/// one of an earlier epoch is in flight).
const POSITION: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq'))
local settled = seq
local mine = epoch .. ':'
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if string.sub(member, 1, #mine) == mine then
    settled = math.min(settled, tonumber(string.sub(member, #mine + 1)) - 1)
  else
    settled = 0
  end
end
return string.format('%s %d %d', epoch, seq, settled)";

/// The most bytes of records a dataset's write log keeps. A write's record is at most 2 KB, so
/// only records of many rows (syncs, up to 4 MiB each) can reach it; the oldest go first (an
/// entry that needed them is recomputed), and the newest always stays.
pub const LOG_MAX_BYTES: usize = 16 << 20;

/// Appends `ARGV[1]` at the next seq and trims the log to `ARGV[2]` records and, after a record
/// larger than a write's, to [`LOG_MAX_BYTES`] (summing the log only then: writes stay O(1)).
const APPEND: &str = r"
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('RPUSH', KEYS[2], seq .. ' ' .. ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
if #ARGV[1] > WRITE_RECORD_MAX_BYTES then
  local items = redis.call('LRANGE', KEYS[2], 0, -1)
  local total = 0
  for i = 1, #items do total = total + #items[i] end
  local drop = 0
  while total > LOG_MAX_BYTES and drop < #items - 1 do
    drop = drop + 1
    total = total - #items[drop]
  end
  if drop > 0 then redis.call('LTRIM', KEYS[2], drop, -1) end
end
";

/// `ARGV`: the record, the log's capacity, the write's lifetime in flight (ms), its tag
/// (`NewWrite::in_flight_tag`) → `{epoch, seq, alone}`, `alone` 1 when no write in flight may
/// touch its row (`tags_conflict`; a write without a tag, from an older version, may). The
/// tags sit in a hash beside the in-flight set (`KEYS[4]`). Members that leave the set by
/// lapsing (here or in `POSITION`) or by a new epoch leave their tags behind: the hash is
/// emptied when the set is, and pruned when it holds many more tags than the set has members.
const BEGIN_WRITE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local others = redis.call('ZRANGE', KEYS[3], 0, -1)
local alone = 1
if #others == 0 then
  redis.call('DEL', KEYS[4])
else
  for _, member in ipairs(others) do
    local tag = redis.call('HGET', KEYS[4], member)
    if (not tag) or tag == '*' or tag == ARGV[4] or ARGV[4] == '*' then alone = 0 end
  end
  if redis.call('HLEN', KEYS[4]) > 2 * #others + 64 then
    for _, field in ipairs(redis.call('HKEYS', KEYS[4])) do
      if not redis.call('ZSCORE', KEYS[3], field) then redis.call('HDEL', KEYS[4], field) end
    end
  end
end
local member = epoch .. ':' .. seq
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), member)
redis.call('HSET', KEYS[4], member, ARGV[4])
return {epoch, seq, alone}";

/// `ARGV`: the epoch and seq the write began at → 1 if its record still stands.
const END_WRITE: &str = r"
redis.call('HDEL', KEYS[4], ARGV[1] .. ':' .. ARGV[2])
local removed = redis.call('ZREM', KEYS[3], ARGV[1] .. ':' .. ARGV[2])
if removed == 1 and epoch == ARGV[1] then return 1 end
return 0";

/// `ARGV`: the record, the log's capacity.
const RECORD_WRITE: &str = r"
return seq";

/// A new epoch (the server clock in µs, or one above the old epoch), its log starting with a change
/// of everything: writes of the old epoch still in flight keep it unsettled (see `POSITION`).
/// Epochs follow the clock, so one issued after a snapshot is not issued again after a restart
/// from that snapshot.
const PURGE: &str = r"
local next = t[1] .. string.format('%06d', tonumber(t[2]))
if tonumber(epoch) >= tonumber(next) then next = string.format('%.0f', tonumber(epoch) + 1) end
redis.call('HSET', KEYS[1], 'epoch', next, 'seq', 1)
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], '1 *')
return 1";

/// At most `ARGV[3]` records of the log from the one after seq `ARGV[2]` on (the oldest kept,
/// if that one is gone), or nil when the dataset is no longer in epoch `ARGV[1]` (read
/// atomically, so a purge between two calls cannot pass off a new epoch's records as the old
/// one's). Records are consecutive (`APPEND`), so a seq's index is its distance from the first.
/// Asking for "the newest n" instead missed the oldest wanted whenever a write landed after the
/// reader's position: under a stream of writes, most freshness checks then failed.
pub static WRITES_OF_EPOCH: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return false end
local first = redis.call('LINDEX', KEYS[2], 0)
local first_seq = first and tonumber(string.match(first, '^(%d+) '))
if not first_seq then return {} end
local from = math.max(tonumber(ARGV[2]) + 1 - first_seq, 0)
return redis.call('LRANGE', KEYS[2], from, from + tonumber(ARGV[3]) - 1)",
    )
});

/// The position scripts, each with the prelude, hashed once.
pub struct PositionScripts {
    pub position: Script,
    pub begin_write: Script,
    pub end_write: Script,
    pub record_write: Script,
    pub purge: Script,
}

pub static SCRIPTS: std::sync::LazyLock<PositionScripts> = std::sync::LazyLock::new(|| {
    let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
    let append = APPEND
        .replace(
            "WRITE_RECORD_MAX_BYTES",
            &WRITE_RECORD_MAX_BYTES.to_string(),
        )
        .replace("LOG_MAX_BYTES", &LOG_MAX_BYTES.to_string());
    let appending = |body: &str| Script::new(&format!("{PRELUDE}{append}{body}"));
    PositionScripts {
        position: with_prelude(POSITION),
        begin_write: appending(BEGIN_WRITE),
        end_write: with_prelude(END_WRITE),
        record_write: appending(RECORD_WRITE),
        purge: with_prelude(PURGE),
    }
});
