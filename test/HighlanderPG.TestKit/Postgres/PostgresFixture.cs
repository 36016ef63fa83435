using HighlanderPG.Testing;
using Xunit;

namespace HighlanderPG.TestKit.Postgres;

/// <summary>
/// The PostgreSQL both test suites use, one per test collection: the server named by
/// <see cref="ConnectionVariable"/> (<c>HIGHLANDER_TEST_CONNECTION</c>) when it is set, else a throwaway
/// <see cref="LocalPostgresServer"/> (temporary data directory, free port; as root, run as the <c>postgres</c> user)
/// started for the run and torn down afterwards.
/// </summary>
/// <remarks>
/// xUnit wants a collection's definition in the test assembly itself: each suite has a one-line
/// <c>[CollectionDefinition]</c> class that uses this fixture.
/// </remarks>
public sealed class PostgresFixture : IAsyncLifetime
{
    /// <summary>The environment variable holding the connection string of an existing server to test against.</summary>
    public const string ConnectionVariable = "HIGHLANDER_TEST_CONNECTION";

    private string? _connectionString;

    /// <summary>The connection string of the server (as its superuser when it is the throwaway one).</summary>
    public string ConnectionString => _connectionString ?? throw new InvalidOperationException("The fixture has not started.");

    /// <summary>The throwaway server started for this run, or <see langword="null"/> when a configured one is used.</summary>
    public LocalPostgresServer? Local { get; private set; }

    /// <inheritdoc />
    public async Task InitializeAsync()
    {
        var configured = Environment.GetEnvironmentVariable(ConnectionVariable);
        if (!string.IsNullOrWhiteSpace(configured))
        {
            _connectionString = configured;
            return;
        }

        Local = await LocalPostgresServer.StartAsync();
        _connectionString = Local.ConnectionString;
    }

    /// <inheritdoc />
    public async Task DisposeAsync()
    {
        if (Local is not null)
        {
            await Local.DisposeAsync();
        }
    }
}
