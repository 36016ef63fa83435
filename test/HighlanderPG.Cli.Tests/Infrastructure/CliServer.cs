namespace HighlanderPG.Cli.Tests.Infrastructure;

/// <summary>The CLI tests that share one PostgreSQL (<see cref="PostgresFixture"/>, from the test kit).</summary>
[CollectionDefinition(Name)]
public sealed class CliServer : ICollectionFixture<PostgresFixture>
{
    public const string Name = "CLI against a shared PostgreSQL";
}
