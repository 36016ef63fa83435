using HighlanderPG.Tests.Infrastructure;
using Npgsql;

namespace HighlanderPG.Tests.Fencing;

/// <summary>A take-over of many fenced singletons bumps their epochs together (EpochBumper.BumpManyAsync).</summary>
[Collection(SharedServer.Name)]
public sealed class FencingBatchTests(PostgresFixture pg)
{
    [Fact]
    public async Task A_take_over_of_many_fenced_singletons_bumps_every_epoch_and_a_row_held_by_a_transaction_holds_back_only_its_own()
    {
        var schema = "f_" + Guid.NewGuid().ToString("N")[..10];
        var names = Enumerable.Range(0, 20).Select(i => $"s{i:00}").ToArray();
        void Fenced(HighlanderOptions o)
        {
            o.Fencing = true;
            o.FencingSchema = schema;
        }

        await using var cluster = new TestCluster(pg.ConnectionString);
        var a = await cluster.StartNodeAsync("a", names, Fenced);
        foreach (var name in names)
        {
            await cluster.Recorder.WaitStartedAsync(name, node: "a");
        }

        var before = await EpochsAsync(schema, cluster.Namespace);
        Assert.Equal(names, before.Keys.Order());

        var b = await cluster.StartNodeAsync("b", names, Fenced);
        foreach (var name in names)
        {
            await b.WaitForLeaderAsync(name, "a");
        }

        // A transaction holding s00's row (as a guarded transaction of the old leader does) while the leadership moves.
        await using var holder = new NpgsqlConnection(pg.ConnectionString);
        await holder.OpenAsync();
        var tx = await holder.BeginTransactionAsync();
        await using (var share = new NpgsqlCommand($"SELECT 1 FROM {schema}.leases WHERE namespace = $1 AND name = 's00' FOR SHARE", holder, tx))
        {
            share.Parameters.Add(new NpgsqlParameter<string> { TypedValue = cluster.Namespace });
            Assert.Equal(1, await share.ExecuteScalarAsync());
        }

        var mark = cluster.Recorder.Mark();
        await a.StopAsync();
        foreach (var name in names.Skip(1))
        {
            await cluster.Recorder.WaitStartedAsync(name, mark, node: "b");
        }

        // Every other singleton runs on b while s00's row is still held: its bump waits, the others did not.
        Assert.DoesNotContain(cluster.Recorder.Events.Skip(mark), e => e.Singleton == "s00" && e.Kind == Testing.Journal.LifeKind.Started);
        var during = await EpochsAsync(schema, cluster.Namespace);
        Assert.Equal(before["s00"], during["s00"]);

        await tx.RollbackAsync();
        await cluster.Recorder.WaitStartedAsync("s00", mark, node: "b");
        var after = await EpochsAsync(schema, cluster.Namespace);
        foreach (var name in names)
        {
            Assert.True(after[name] > before[name], $"{name}: epoch {before[name]} then {after[name]}");
        }

        Assert.Equal(names.Length, after.Count); // one row each, none moved or lost
        cluster.Recorder.AssertNoOverlap();
    }

    private async Task<Dictionary<string, long>> EpochsAsync(string schema, string @namespace)
    {
        await using var connection = new NpgsqlConnection(pg.ConnectionString);
        await connection.OpenAsync();
        await using var cmd = new NpgsqlCommand($"SELECT name, epoch FROM {schema}.leases WHERE namespace = $1", connection);
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = @namespace });
        var epochs = new Dictionary<string, long>();
        await using var reader = await cmd.ExecuteReaderAsync();
        while (await reader.ReadAsync())
        {
            epochs.Add(reader.GetString(0), reader.GetInt64(1));
        }

        return epochs;
    }
}
