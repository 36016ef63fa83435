using System.Globalization;
using HighlanderPG.Leasing;
using HighlanderPG.Tests.Infrastructure;
using Npgsql;

namespace HighlanderPG.Tests.Leasing;

/// <summary>
/// The question "who holds these keys" (<see cref="HolderQuery"/>), as a lock session asks it: prepared and planned once
/// for any parameter (<c>plan_cache_mode = force_generic_plan</c>, docs/lease-protocol.md). Its answer is exact, and its
/// plan joins the keys with the lock table by hashing, so that its cost grows with keys + locks, not keys x locks (a
/// nested loop over 1,000 keys for each of 1,000 locks cost the server 84 ms per question at a take-over).
/// </summary>
[Collection(SharedServer.Name)]
public sealed class HolderQueryTests(PostgresFixture pg)
{
    [Fact]
    public async Task A_prepared_generic_holder_query_finds_exactly_the_held_keys_and_hashes_them_instead_of_a_nested_loop()
    {
        // Keys of this test only (the server is shared): 300 held exclusively by one session (and one of them also asked
        // for by another session, which waits), 2 held in shared mode only (not a holder), 1 held as a pair of int4 keys
        // whose halves are a bigint key's (not that key), and 100 asked about that nobody holds. Unpooled sessions: their
        // locks end with them.
        var seed = Random.Shared.NextInt64(1L << 40, 1L << 50);
        var held = Enumerable.Range(0, 300).Select(i => seed + i).ToArray();
        var sharedOnly = new[] { seed + 1000, seed + 1001 };
        var pairOnly = seed + 1002;
        var free = Enumerable.Range(2000, 100).Select(i => seed + i).ToArray();
        var unpooled = new NpgsqlConnectionStringBuilder(pg.ConnectionString) { Pooling = false }.ConnectionString;

        await using var holder = new NpgsqlConnection(unpooled);
        await holder.OpenAsync();
        await Execute(holder, "SELECT count(pg_advisory_lock(k)) FROM unnest($1::bigint[]) AS t(k)", held);
        var holderPid = holder.ProcessID;
        await using var sharer = new NpgsqlConnection(unpooled);
        await sharer.OpenAsync();
        await Execute(sharer, "SELECT count(pg_advisory_lock_shared(k)) FROM unnest($1::bigint[]) AS t(k)", sharedOnly);
        await Execute(sharer, "SELECT pg_advisory_lock((k >> 32)::int, (k & 4294967295)::bit(32)::int) FROM unnest($1::bigint[]) AS t(k)", [pairOnly]);

        // A session waiting for a held key: its request is in pg_locks, not granted.
        await using var waiter = new NpgsqlConnection(unpooled);
        await waiter.OpenAsync();
        var waiterPid = waiter.ProcessID;
        var waiting = Execute(waiter, "SELECT count(pg_advisory_lock(k)) FROM unnest($1::bigint[]) AS t(k)", [held[7]]);
        await using (var look = new NpgsqlConnection(unpooled))
        {
            await look.OpenAsync();
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            while (true)
            {
                await using var cmd = new NpgsqlCommand("SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND NOT granted", look);
                cmd.Parameters.Add(new NpgsqlParameter<int> { TypedValue = waiterPid });
                if ((long)(await cmd.ExecuteScalarAsync())! == 1)
                {
                    break;
                }

                Assert.True(DateTime.UtcNow < deadline, "the waiting session's request never showed in pg_locks");
                await Task.Delay(20);
            }
        }

        await using var asker = new NpgsqlConnection(unpooled);
        await asker.OpenAsync();
        await Execute(asker, "SET plan_cache_mode = force_generic_plan");
        await Execute(asker, $"PREPARE holders(bigint[]) AS {HolderQuery.Sql}");
        var asked = held.Concat(sharedOnly).Append(pairOnly).Concat(free).ToArray();
        var literal = "'{" + string.Join(',', asked.Select(k => k.ToString(CultureInfo.InvariantCulture))) + "}'";

        var found = new Dictionary<long, int>();
        await using (var cmd = new NpgsqlCommand($"EXECUTE holders({literal})", asker))
        await using (var reader = await cmd.ExecuteReaderAsync())
        {
            while (await reader.ReadAsync())
            {
                var (key, leader) = HolderQuery.Read(reader);
                Assert.True(found.TryAdd(key, leader.BackendPid), $"key {key} answered twice");
            }
        }

        Assert.Equal(held.Order(), found.Keys.Order());
        Assert.All(found.Values, pid => Assert.Equal(holderPid, pid));

        string plan;
        await using (var cmd = new NpgsqlCommand($"EXPLAIN (FORMAT TEXT) EXECUTE holders({literal})", asker))
        await using (var reader = await cmd.ExecuteReaderAsync())
        {
            var lines = new List<string>();
            while (await reader.ReadAsync())
            {
                lines.Add(reader.GetString(0));
            }

            plan = string.Join('\n', lines);
        }

        Assert.Contains("Hash Join", plan, StringComparison.Ordinal);
        Assert.DoesNotContain("Nested Loop", plan, StringComparison.Ordinal);

        // The holder goes: the waiter gets its key and is done.
        await holder.CloseAsync();
        await waiting.WaitAsync(TimeSpan.FromSeconds(30));
    }

    private static async Task Execute(NpgsqlConnection connection, string sql, long[]? keys = null)
    {
        await using var cmd = new NpgsqlCommand(sql, connection);
        if (keys is not null)
        {
            cmd.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = keys });
        }

        await cmd.ExecuteNonQueryAsync();
    }
}
