<?php
/**
 * Plugin Name:  Kalkan purge
 * Description:  When a post is published, updated, unpublished or trashed, or one of its comments
 *               is approved, asks the Kalkan edge in front of this site to drop its cached copies
 *               of that post, the front page, the feeds and the post's category, tag and author
 *               archives, so readers see the change at once instead of within the microcache TTL.
 * Version:      1.0.0
 * Requires PHP: 7.4
 * License:      GPL-2.0-or-later
 *
 * Install: copy this file to wp-content/plugins/kalkan-purge.php (or wp-content/mu-plugins/ so
 * nobody can switch it off), activate it, and put in wp-config.php:
 *
 *     define( 'KALKAN_ADMIN_TOKEN', '...' );  // the contents of Kalkan's STATE_DIR/admin.token
 *     define( 'KALKAN_ADMIN_URL', 'http://127.0.0.1:9181' );  // optional: this is the default
 *
 * It calls Kalkan's admin API, `POST /purge?url=URL` with `Authorization: Bearer TOKEN` (the same
 * call as `kalkan purge URL`), once per URL and for both http:// and https://, since the cache
 * keeps the two apart. A purge removes the cached copy, grace copy included: that is why only the
 * pages a change shows on are purged, never the whole cache. Paginated archives (/page/2/) are
 * left to the microcache TTL. Failures are written to the PHP error log, never shown to editors
 * and never block saving the post.
 */

defined( 'ABSPATH' ) || exit;

/** Published permalinks as they were before this save (a changed slug must purge the old URL). */
$GLOBALS['kalkan_purge_before'] = array();

add_action( 'pre_post_update', 'kalkan_purge_remember', 10, 1 );
add_action( 'transition_post_status', 'kalkan_purge_on_transition', 10, 3 );
add_action( 'wp_update_comment_count', 'kalkan_purge_on_comment_count', 10, 1 );

function kalkan_purge_remember( $post_id ) {
	if ( 'publish' === get_post_status( $post_id ) ) {
		$GLOBALS['kalkan_purge_before'][ $post_id ] = get_permalink( $post_id );
	}
}

/**
 * Every save of a published post fires publish -> publish; publishing, unpublishing and trashing
 * fire the other transitions. A draft saved as a draft is nobody's business but the editor's.
 */
function kalkan_purge_on_transition( $new_status, $old_status, $post ) {
	if ( 'publish' !== $new_status && 'publish' !== $old_status ) {
		return;
	}
	if ( wp_is_post_revision( $post ) || wp_is_post_autosave( $post ) ||
		! is_post_type_viewable( $post->post_type ) ) {
		return;
	}
	$urls = kalkan_purge_urls_for( $post );
	if ( isset( $GLOBALS['kalkan_purge_before'][ $post->ID ] ) ) {
		$urls[] = $GLOBALS['kalkan_purge_before'][ $post->ID ];
	}
	kalkan_purge( $urls );
}

/** An approved (or unapproved) comment changes the post's page and count. */
function kalkan_purge_on_comment_count( $post_id ) {
	$post = get_post( $post_id );
	if ( $post && 'publish' === $post->post_status ) {
		kalkan_purge( array( get_permalink( $post ), get_post_comments_feed_link( $post->ID ) ) );
	}
}

/** The pages a change to this post shows on. */
function kalkan_purge_urls_for( $post ) {
	$urls = array( get_permalink( $post ), home_url( '/' ), get_feed_link() );
	foreach ( array( 'category', 'post_tag' ) as $taxonomy ) {
		$terms = get_the_terms( $post, $taxonomy );
		if ( is_array( $terms ) ) {
			foreach ( $terms as $term ) {
				$link = get_term_link( $term );
				if ( is_string( $link ) ) {
					$urls[] = $link;
				}
			}
		}
	}
	$urls[] = get_author_posts_url( (int) $post->post_author );
	return $urls;
}

/** Ask Kalkan to drop each URL, for http and https; returns how many copies were dropped. */
function kalkan_purge( array $urls ) {
	if ( ! defined( 'KALKAN_ADMIN_TOKEN' ) || '' === KALKAN_ADMIN_TOKEN ) {
		error_log( 'kalkan-purge: KALKAN_ADMIN_TOKEN is not defined in wp-config.php; nothing purged' );
		return 0;
	}
	$admin  = defined( 'KALKAN_ADMIN_URL' ) ? rtrim( KALKAN_ADMIN_URL, '/' ) : 'http://127.0.0.1:9181';
	$purged = 0;
	$done   = array();
	foreach ( $urls as $url ) {
		if ( ! is_string( $url ) || '' === $url ) {
			continue;
		}
		foreach ( array( 'http', 'https' ) as $scheme ) {
			$one = set_url_scheme( $url, $scheme );
			if ( isset( $done[ $one ] ) ) {
				continue;
			}
			$done[ $one ] = true;
			$response     = wp_remote_post(
				$admin . '/purge?url=' . rawurlencode( $one ),
				array(
					'headers' => array( 'Authorization' => 'Bearer ' . KALKAN_ADMIN_TOKEN ),
					'timeout' => 2,
				)
			);
			if ( is_wp_error( $response ) ) {
				error_log( 'kalkan-purge: ' . $one . ': ' . $response->get_error_message() );
				return $purged;  // Kalkan is not answering: do not make the editor wait on each URL
			}
			$code = wp_remote_retrieve_response_code( $response );
			if ( 200 !== $code ) {
				error_log( 'kalkan-purge: ' . $one . ': Kalkan answered ' . $code . ' ' .
					wp_remote_retrieve_body( $response ) );
				continue;
			}
			$answer  = json_decode( wp_remote_retrieve_body( $response ), true );
			$purged += is_array( $answer ) && isset( $answer['purged'] ) ? (int) $answer['purged'] : 0;
		}
	}
	return $purged;
}
