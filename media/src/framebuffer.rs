//! A copy of the desktop's pixels, kept up to date by the RFB client
//! ([`crate::rfb_client`]) and read by the video encoder.
//!
//! Pixels are `u32` values `0x00RRGGBB`, row-major, with a stride of exactly
//! [`Framebuffer::width`] pixels. In memory on a little-endian host each pixel
//! is the bytes B, G, R, 0: libyuv's "ARGB" and FFmpeg's `bgr0`, the layout
//! RGB-to-I420 converters take directly (through a safe cast such as
//! `bytemuck::cast_slice`), and the very bytes the RFB server sends for the
//! pixel format the client asks for, so raw rectangles are copied unchanged.
//!
//! Every write records damage: the rectangles changed since the last
//! [`Framebuffer::take_damage`], so an encoder knows whether (and where) a
//! new frame differs from the last one.

/// The most pixels a framebuffer may hold (8192 × 8192, 256 MiB): larger
/// sizes from a server are refused rather than allocated.
pub const MAX_PIXELS: usize = 8192 * 8192;

/// Damage is kept as a list up to this many rectangles, then collapsed into
/// their bounding box, so a server sending thousands of tiny rectangles
/// cannot grow the list without bound.
const MAX_DAMAGE_RECTS: usize = 64;

/// A rectangle of the framebuffer, in pixels (RFB's 16-bit coordinates).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rect {
    /// Left edge.
    pub x: u16,
    /// Top edge.
    pub y: u16,
    /// Width; zero for an empty rectangle.
    pub width: u16,
    /// Height; zero for an empty rectangle.
    pub height: u16,
}

impl Rect {
    /// The rectangle at (`x`, `y`) of `width` × `height`.
    pub const fn new(x: u16, y: u16, width: u16, height: u16) -> Self {
        Self {
            x,
            y,
            width,
            height,
        }
    }

    /// Whether the rectangle covers no pixel.
    pub const fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// The number of pixels covered.
    pub const fn area(&self) -> usize {
        self.width as usize * self.height as usize
    }

    /// One past the right edge (may exceed `u16`, hence `u32`).
    pub const fn right(&self) -> u32 {
        self.x as u32 + self.width as u32
    }

    /// One past the bottom edge (may exceed `u16`, hence `u32`).
    pub const fn bottom(&self) -> u32 {
        self.y as u32 + self.height as u32
    }

    /// The smallest rectangle holding both; an empty side is ignored.
    pub fn union(&self, other: &Self) -> Self {
        if self.is_empty() {
            return *other;
        }
        if other.is_empty() {
            return *self;
        }
        let x = self.x.min(other.x);
        let y = self.y.min(other.y);
        // Both rectangles lie within the framebuffer, so the union fits u16.
        let right = self.right().max(other.right());
        let bottom = self.bottom().max(other.bottom());
        Self::new(
            x,
            y,
            (right - u32::from(x)) as u16,
            (bottom - u32::from(y)) as u16,
        )
    }

    /// Whether `other` lies entirely inside this rectangle.
    pub fn contains(&self, other: &Self) -> bool {
        other.x >= self.x
            && other.y >= self.y
            && other.right() <= self.right()
            && other.bottom() <= self.bottom()
    }
}

/// A write the framebuffer refuses.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramebufferError {
    /// The requested size holds more than [`MAX_PIXELS`].
    #[error("a {width}x{height} framebuffer is larger than the limit of {MAX_PIXELS} pixels")]
    TooLarge {
        /// Requested width.
        width: u16,
        /// Requested height.
        height: u16,
    },
    /// A rectangle reaches outside the framebuffer.
    #[error("rectangle {rect:?} lies outside the {width}x{height} framebuffer")]
    OutOfBounds {
        /// The offending rectangle.
        rect: Rect,
        /// Framebuffer width.
        width: u16,
        /// Framebuffer height.
        height: u16,
    },
    /// Pixel data does not match the rectangle's size.
    #[error("{got} pixels given for a rectangle of {expected}")]
    WrongPixelCount {
        /// Pixels the rectangle covers.
        expected: usize,
        /// Pixels given.
        got: usize,
    },
}

/// The desktop's pixels (`0x00RRGGBB`, see the module docs) and the damage
/// since the last [`take_damage`](Self::take_damage).
#[derive(Clone, Debug)]
pub struct Framebuffer {
    width: u16,
    height: u16,
    pixels: Vec<u32>,
    damage: Vec<Rect>,
}

impl Framebuffer {
    /// A black framebuffer of `width` × `height`, wholly damaged (nothing of
    /// it has been encoded yet).
    pub fn new(width: u16, height: u16) -> Result<Self, FramebufferError> {
        check_size(width, height)?;
        let mut framebuffer = Self {
            width,
            height,
            pixels: vec![0; usize::from(width) * usize::from(height)],
            damage: Vec::new(),
        };
        framebuffer.add_damage(framebuffer.bounds());
        Ok(framebuffer)
    }

    /// Width in pixels.
    pub fn width(&self) -> u16 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u16 {
        self.height
    }

    /// The whole framebuffer as a rectangle.
    pub fn bounds(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// All pixels, row-major; row `y` is `pixels()[y * width..][..width]`.
    pub fn pixels(&self) -> &[u32] {
        &self.pixels
    }

    /// The pixel at (`x`, `y`), or `None` outside the framebuffer.
    pub fn pixel(&self, x: u16, y: u16) -> Option<u32> {
        (x < self.width && y < self.height).then(|| self.pixels[self.index(x, y)])
    }

    /// Fails unless `rect` lies wholly inside the framebuffer.
    pub fn check_rect(&self, rect: Rect) -> Result<(), FramebufferError> {
        if rect.right() <= u32::from(self.width) && rect.bottom() <= u32::from(self.height) {
            Ok(())
        } else {
            Err(FramebufferError::OutOfBounds {
                rect,
                width: self.width,
                height: self.height,
            })
        }
    }

    /// Paints `rect` in one colour.
    pub fn fill_rect(&mut self, rect: Rect, colour: u32) -> Result<(), FramebufferError> {
        self.check_rect(rect)?;
        for row in 0..rect.height {
            let start = self.index(rect.x, rect.y + row);
            self.pixels[start..start + usize::from(rect.width)].fill(colour);
        }
        self.add_damage(rect);
        Ok(())
    }

    /// Writes `rect` from `rows`: `rect.height` rows of `rect.width` pixels each.
    pub fn put_raw(&mut self, rect: Rect, rows: &[u32]) -> Result<(), FramebufferError> {
        self.put_rows_undamaged(rect, rows)?;
        self.add_damage(rect);
        Ok(())
    }

    /// Copies the pixels of the `rect`-sized area at (`src_x`, `src_y`) onto
    /// `rect`. Overlapping areas are copied as if through a temporary copy
    /// (like `memmove`), which is what RFB's CopyRect means.
    pub fn copy_rect(
        &mut self,
        src_x: u16,
        src_y: u16,
        rect: Rect,
    ) -> Result<(), FramebufferError> {
        self.check_rect(Rect::new(src_x, src_y, rect.width, rect.height))?;
        self.check_rect(rect)?;
        let width = usize::from(rect.width);
        // Moving down: copy bottom rows first so no source row is overwritten
        // before it is read. Within a row, copy_within handles the overlap.
        let bottom_up = rect.y > src_y;
        for step in 0..rect.height {
            let row = if bottom_up {
                rect.height - 1 - step
            } else {
                step
            };
            let from = self.index(src_x, src_y + row);
            let to = self.index(rect.x, rect.y + row);
            self.pixels.copy_within(from..from + width, to);
        }
        self.add_damage(rect);
        Ok(())
    }

    /// Changes the size. The area both sizes share keeps its pixels, the rest
    /// is black, and the whole framebuffer is damaged (an encoder must start
    /// a new stream at the new size anyway).
    pub fn resize(&mut self, width: u16, height: u16) -> Result<(), FramebufferError> {
        check_size(width, height)?;
        let mut pixels = vec![0; usize::from(width) * usize::from(height)];
        let keep_width = usize::from(width.min(self.width));
        for row in 0..usize::from(height.min(self.height)) {
            let from = row * usize::from(self.width);
            let to = row * usize::from(width);
            pixels[to..to + keep_width].copy_from_slice(&self.pixels[from..from + keep_width]);
        }
        self.width = width;
        self.height = height;
        self.pixels = pixels;
        self.damage.clear();
        self.add_damage(self.bounds());
        Ok(())
    }

    /// Records `rect` as changed (clipped to the framebuffer).
    pub fn add_damage(&mut self, rect: Rect) {
        let rect = self.clip(rect);
        if rect.is_empty() || self.damage.iter().any(|known| known.contains(&rect)) {
            return;
        }
        self.damage.retain(|known| !rect.contains(known));
        self.damage.push(rect);
        if self.damage.len() > MAX_DAMAGE_RECTS {
            let bounding = self
                .damage
                .iter()
                .fold(Rect::default(), |all, r| all.union(r));
            self.damage.clear();
            self.damage.push(bounding);
        }
    }

    /// The rectangles changed since the last call (none if nothing changed);
    /// the tracker starts empty again.
    pub fn take_damage(&mut self) -> Vec<Rect> {
        std::mem::take(&mut self.damage)
    }

    /// Whether anything changed since the last [`take_damage`](Self::take_damage).
    pub fn is_damaged(&self) -> bool {
        !self.damage.is_empty()
    }

    /// [`put_raw`](Self::put_raw) without recording damage, for decoders
    /// that write a rectangle in pieces and record it once.
    pub(crate) fn put_rows_undamaged(
        &mut self,
        rect: Rect,
        rows: &[u32],
    ) -> Result<(), FramebufferError> {
        self.check_rect(rect)?;
        if rows.len() != rect.area() {
            return Err(FramebufferError::WrongPixelCount {
                expected: rect.area(),
                got: rows.len(),
            });
        }
        if rect.width == 0 {
            return Ok(());
        }
        for (row, source) in rows.chunks_exact(usize::from(rect.width)).enumerate() {
            let start = self.index(rect.x, rect.y + row as u16);
            self.pixels[start..start + source.len()].copy_from_slice(source);
        }
        Ok(())
    }

    fn index(&self, x: u16, y: u16) -> usize {
        usize::from(y) * usize::from(self.width) + usize::from(x)
    }

    fn clip(&self, rect: Rect) -> Rect {
        let x = rect.x.min(self.width);
        let y = rect.y.min(self.height);
        let right = rect.right().min(u32::from(self.width));
        let bottom = rect.bottom().min(u32::from(self.height));
        Rect::new(
            x,
            y,
            (right - u32::from(x)) as u16,
            (bottom - u32::from(y)) as u16,
        )
    }
}

fn check_size(width: u16, height: u16) -> Result<(), FramebufferError> {
    if usize::from(width) * usize::from(height) > MAX_PIXELS {
        return Err(FramebufferError::TooLarge { width, height });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A framebuffer whose pixel at (x, y) is `y * 1000 + x`, damage taken.
    fn numbered(width: u16, height: u16) -> Framebuffer {
        let mut framebuffer = Framebuffer::new(width, height).unwrap();
        let rows: Vec<u32> = (0..height)
            .flat_map(|y| (0..width).map(move |x| u32::from(y) * 1000 + u32::from(x)))
            .collect();
        framebuffer.put_raw(framebuffer.bounds(), &rows).unwrap();
        framebuffer.take_damage();
        framebuffer
    }

    #[test]
    fn a_new_framebuffer_is_black_and_wholly_damaged() {
        let mut framebuffer = Framebuffer::new(4, 3).unwrap();
        assert!(framebuffer.pixels().iter().all(|&p| p == 0));
        assert_eq!(framebuffer.take_damage(), vec![Rect::new(0, 0, 4, 3)]);
        assert!(framebuffer.take_damage().is_empty());
    }

    #[test]
    fn absurd_sizes_are_refused() {
        assert_eq!(
            Framebuffer::new(u16::MAX, u16::MAX).unwrap_err(),
            FramebufferError::TooLarge {
                width: u16::MAX,
                height: u16::MAX
            }
        );
        let mut framebuffer = Framebuffer::new(2, 2).unwrap();
        assert!(framebuffer.resize(8193, 8192).is_err());
        assert_eq!(framebuffer.width(), 2);
    }

    #[test]
    fn fill_and_put_raw_write_exactly_their_rectangle() {
        let mut framebuffer = Framebuffer::new(5, 4).unwrap();
        framebuffer.take_damage();
        framebuffer
            .fill_rect(Rect::new(1, 1, 3, 2), 0x00ff_0000)
            .unwrap();
        framebuffer
            .put_raw(Rect::new(3, 2, 2, 2), &[1, 2, 3, 4])
            .unwrap();
        let expected: [[u32; 5]; 4] = [
            [0, 0, 0, 0, 0],
            [0, 0xff0000, 0xff0000, 0xff0000, 0],
            [0, 0xff0000, 0xff0000, 1, 2],
            [0, 0, 0, 3, 4],
        ];
        for (y, row) in expected.iter().enumerate() {
            for (x, &want) in row.iter().enumerate() {
                assert_eq!(
                    framebuffer.pixel(x as u16, y as u16),
                    Some(want),
                    "({x},{y})"
                );
            }
        }
        assert_eq!(framebuffer.pixel(5, 0), None);
        assert_eq!(
            framebuffer.take_damage(),
            vec![Rect::new(1, 1, 3, 2), Rect::new(3, 2, 2, 2)]
        );
    }

    #[test]
    fn writes_outside_the_framebuffer_are_refused() {
        let mut framebuffer = Framebuffer::new(4, 4).unwrap();
        framebuffer.take_damage();
        assert!(matches!(
            framebuffer.fill_rect(Rect::new(3, 0, 2, 1), 1),
            Err(FramebufferError::OutOfBounds { .. })
        ));
        assert!(
            framebuffer
                .put_raw(Rect::new(0, 0, 2, 2), &[1, 2, 3])
                .is_err()
        );
        assert!(framebuffer.copy_rect(3, 3, Rect::new(0, 0, 2, 2)).is_err());
        assert!(!framebuffer.is_damaged());
        assert!(framebuffer.pixels().iter().all(|&p| p == 0));
    }

    #[test]
    fn copy_rect_moves_overlapping_areas_like_memmove() {
        // Each direction: compare with a copy made through a temporary buffer.
        for (src_x, src_y, dest) in [
            (0, 0, Rect::new(1, 1, 4, 3)), // down-right
            (2, 2, Rect::new(1, 1, 4, 3)), // up-left
            (1, 0, Rect::new(0, 0, 5, 4)), // left, same rows
            (0, 0, Rect::new(1, 0, 5, 4)), // right, same rows
            (0, 1, Rect::new(0, 0, 6, 4)), // up, same columns
            (0, 0, Rect::new(0, 1, 6, 4)), // down, same columns
        ] {
            let mut framebuffer = numbered(6, 5);
            let before = framebuffer.clone();
            framebuffer.copy_rect(src_x, src_y, dest).unwrap();
            for y in 0..5u16 {
                for x in 0..6u16 {
                    let inside = dest.contains(&Rect::new(x, y, 1, 1));
                    let want = if inside {
                        before.pixel(src_x + x - dest.x, src_y + y - dest.y)
                    } else {
                        before.pixel(x, y)
                    };
                    assert_eq!(framebuffer.pixel(x, y), want, "({x},{y}) for {dest:?}");
                }
            }
            assert_eq!(framebuffer.take_damage(), vec![dest]);
        }
    }

    #[test]
    fn resize_keeps_the_shared_area_and_damages_everything() {
        let mut framebuffer = numbered(4, 3);
        framebuffer.resize(2, 5).unwrap();
        assert_eq!((framebuffer.width(), framebuffer.height()), (2, 5));
        assert_eq!(
            framebuffer.pixels(),
            &[0, 1, 1000, 1001, 2000, 2001, 0, 0, 0, 0]
        );
        assert_eq!(framebuffer.take_damage(), vec![Rect::new(0, 0, 2, 5)]);
    }

    #[test]
    fn damage_merges_contained_rects_and_stays_bounded() {
        let mut framebuffer = Framebuffer::new(200, 200).unwrap();
        framebuffer.take_damage();
        framebuffer.add_damage(Rect::new(10, 10, 5, 5));
        framebuffer.add_damage(Rect::new(11, 11, 2, 2)); // inside the first
        framebuffer.add_damage(Rect::new(190, 190, 20, 20)); // clipped
        assert_eq!(
            framebuffer.take_damage(),
            vec![Rect::new(10, 10, 5, 5), Rect::new(190, 190, 10, 10)]
        );
        for i in 0..100u16 {
            framebuffer.add_damage(Rect::new(i, i, 1, 1));
        }
        let damage = framebuffer.take_damage();
        assert!(damage.len() <= MAX_DAMAGE_RECTS, "{}", damage.len());
        let bounding = damage.iter().fold(Rect::default(), |all, r| all.union(r));
        assert_eq!(bounding, Rect::new(0, 0, 100, 100));
    }
}
