"""The first registry schema: concepts, versions, current pointers, lineage, blobs, aliases, events.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_table(
        "concepts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("condition_schema", sa.JSON, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("concept_id", sa.Integer, sa.ForeignKey("concepts.id"), nullable=False, index=True),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("architecture", sa.String(128), nullable=False),
        sa.Column("architecture_config", sa.JSON, nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("source_params", sa.JSON, nullable=False),
        sa.Column("attribute", sa.String(128), nullable=False),
        sa.Column("dataset_hash", sa.String(64), nullable=False),
        sa.Column("hyperparameters", sa.JSON, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("weights_sha256", sa.String(64), sa.ForeignKey("blobs.sha256"), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.UniqueConstraint("concept_id", "number", name="uq_versions_concept_number"),
    )
    op.create_table(
        "current_versions",
        sa.Column("concept_id", sa.Integer, sa.ForeignKey("concepts.id"), primary_key=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=False),
    )
    op.create_table(
        "lineage",
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("frozen_version_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
    )
    op.create_table(
        "aliases",
        sa.Column("concept_id", sa.Integer, sa.ForeignKey("concepts.id"), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("concept", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("details", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    for table in ("events", "aliases", "lineage", "current_versions", "versions", "concepts", "blobs"):
        op.drop_table(table)
