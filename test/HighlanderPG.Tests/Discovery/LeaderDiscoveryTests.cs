using HighlanderPG.Discovery;
using HighlanderPG.Fencing;
using HighlanderPG.Tests.Infrastructure;
using Npgsql;

namespace HighlanderPG.Tests.Discovery;

[Collection(SharedServer.Name)]
public sealed class LeaderDiscoveryTests(PostgresFixture pg)
{
    private static string NewSchema() => "f_" + Guid.NewGuid().ToString("N")[..10];

    [Fact]
    public async Task A_writer_with_only_the_documented_grants_finds_the_leader_from_pg_locks_and_is_told_what_is_missing()
    {
        // The fencing table exists (a node runs with fencing on) and the writer role has what the README lists for
        // writers: USAGE on the schema and EXECUTE on the guard function, no SELECT on the table.
        var schema = NewSchema();
        var writerRole = schema + "_writer";
        var password = Guid.NewGuid().ToString("N");
        await Db.ScalarAsync<object>(pg.ConnectionString, FencingSql.Ddl(schema));
        await Db.ScalarAsync<object>(pg.ConnectionString, $"""
            CREATE ROLE {writerRole} LOGIN PASSWORD '{password}';
            GRANT USAGE ON SCHEMA {schema} TO {writerRole};
            GRANT EXECUTE ON FUNCTION {schema}.assert_epoch(text, bigint, text) TO {writerRole};
            """);
        try
        {
            var asWriter = new NpgsqlConnectionStringBuilder(pg.ConnectionString) { Username = writerRole, Password = password }.ConnectionString;
            await using var cluster = new TestCluster(pg.ConnectionString);
            var node = await cluster.StartNodeAsync("fenced", configure: o =>
            {
                o.Fencing = true;
                o.FencingSchema = schema;
            });
            var leading = await node.WaitForStateAsync("job", SingletonState.Leading);
            var key = SingletonKey.Derive(cluster.Namespace, "job");

            // By connection string (a new unpooled connection), by data source (pooled), and on an open connection inside
            // a transaction of the caller's, which stays usable: nothing failed in it.
            var byString = await LeaderDiscovery.GetLeaderAsync(asWriter, "job", cluster.Namespace, schema);
            await using var dataSource = NpgsqlDataSource.Create(asWriter);
            var bySource = await LeaderDiscovery.GetLeaderAsync(dataSource, "job", cluster.Namespace, schema);
            var listed = await LeaderDiscovery.ListAsync(dataSource, ["job"], cluster.Namespace, schema);
            await using var connection = await dataSource.OpenConnectionAsync();
            await using var tx = await connection.BeginTransactionAsync();
            var byConnection = await LeaderDiscovery.GetLeaderAsync(connection, "job", cluster.Namespace, schema);
            await FencingGuard.AssertEpochAsync(tx, "job", leading.FencingEpoch!.Value, cluster.Namespace, schema);
            await tx.CommitAsync();

            foreach (var found in new[] { byString, bySource, Assert.Single(listed, l => l.Key == key), byConnection })
            {
                Assert.NotNull(found);
                Assert.Equal(key, found.Key);
                Assert.Equal("job", found.Name); // from the names given
                Assert.Equal("fenced", found.Leader.NodeId); // from pg_locks and application_name
                Assert.Null(found.FencingEpoch);
                Assert.Null(found.Since);
                Assert.Null(found.Leader.SessionStarted); // pg_stat_activity hides it from a role without pg_read_all_stats
                Assert.Contains($"GRANT SELECT ON {schema}.leases", found.DetailsUnavailable);
            }

            // With the grant it names, the same caller gets the table's details and no note.
            await Db.ScalarAsync<object>(pg.ConnectionString, $"GRANT SELECT ON {schema}.leases TO {writerRole}");
            var granted = await LeaderDiscovery.GetLeaderAsync(dataSource, "job", cluster.Namespace, schema);
            Assert.NotNull(granted);
            Assert.Equal(leading.FencingEpoch, granted.FencingEpoch);
            Assert.NotNull(granted.Since);
            Assert.Null(granted.DetailsUnavailable);
        }
        finally
        {
            NpgsqlConnection.ClearAllPools();
            await Db.ScalarAsync<object>(pg.ConnectionString, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", writerRole);
            await Db.ScalarAsync<object>(pg.ConnectionString, $"DROP SCHEMA {schema} CASCADE; DROP OWNED BY {writerRole}; DROP ROLE {writerRole};");
        }
    }

    [Fact]
    public async Task Without_usage_on_the_schema_discovery_still_answers_and_names_both_grants()
    {
        var schema = NewSchema();
        var role = schema + "_none";
        var password = Guid.NewGuid().ToString("N");
        await Db.ScalarAsync<object>(pg.ConnectionString, FencingSql.Ddl(schema));
        await Db.ScalarAsync<object>(pg.ConnectionString, $"CREATE ROLE {role} LOGIN PASSWORD '{password}'");
        try
        {
            await using var cluster = new TestCluster(pg.ConnectionString);
            var node = await cluster.StartNodeAsync("fenced2", configure: o =>
            {
                o.Fencing = true;
                o.FencingSchema = schema;
            });
            await node.WaitForStateAsync("job", SingletonState.Leading);
            var asRole = new NpgsqlConnectionStringBuilder(pg.ConnectionString) { Username = role, Password = password, Pooling = false }.ConnectionString;
            await using var connection = new NpgsqlConnection(asRole);
            await connection.OpenAsync();
            var found = await LeaderDiscovery.GetLeaderAsync(connection, "job", cluster.Namespace, schema);
            Assert.NotNull(found);
            Assert.Equal("fenced2", found.Leader.NodeId);
            Assert.Null(found.FencingEpoch);
            Assert.Contains($"GRANT USAGE ON SCHEMA {schema}", found.DetailsUnavailable);
            Assert.Contains($"GRANT SELECT ON {schema}.leases", found.DetailsUnavailable);

            // And a superuser (who may read the table) gets the details, with no note.
            var full = await LeaderDiscovery.GetLeaderAsync(pg.ConnectionString, "job", cluster.Namespace, schema);
            Assert.NotNull(full?.FencingEpoch);
            Assert.Null(full.DetailsUnavailable);
        }
        finally
        {
            await Db.ScalarAsync<object>(pg.ConnectionString, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role);
            await Db.ScalarAsync<object>(pg.ConnectionString, $"DROP SCHEMA {schema} CASCADE; DROP OWNED BY {role}; DROP ROLE {role};");
        }
    }
}
